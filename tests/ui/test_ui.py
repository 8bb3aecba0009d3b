"""End to end through the browser: the pages a user opens after running pipelines and logging
metrics, against a real `capstan server`, real runs and the unmodified mlflow client."""

import json
import os
import re
import sys
import tempfile
import urllib.request

import pytest
from conftest import REPO, Capstan

FAILING = """\
name: ui-failing
steps:
  prepare:
    run: [sh, -c, "echo preparing"]
  boom:
    after: [prepare]
    run: [sh, -c, "echo about to fail; echo the disk is on fire >&2; exit 3"]
"""

SLOW = """\
name: ui-slow
steps:
  first:
    run: [sh, -c, "echo first starts; sleep 4; echo first ends"]
  second:
    after: [first]
    run: [sh, -c, "echo second runs"]
"""


def get(url):
    with urllib.request.urlopen(url) as resp:
        return json.load(resp)


def run_id_of(stdout):
    return re.search(r"\b[0-9a-f]{32}\b", stdout).group(0)


@pytest.fixture(scope="module")
def env():
    cap = Capstan("capstan-ui-").start()
    quick = cap.cli("run", os.path.join(REPO, "examples/quickstart/pipeline.yaml"))
    failing_yaml = os.path.join(cap.home, "failing.yaml")
    with open(failing_yaml, "w") as f:
        f.write(FAILING)
    failing = cap.cli("run", failing_yaml, check=False)
    assert failing.returncode != 0
    # A KFP pipeline with an artifact of each previewed kind; its component runs kfp's executor,
    # so the venv (with kfp) comes first on the PATH.
    from previews_pipeline import compile_to

    previews_yaml = os.path.join(cap.home, "previews.yaml")
    compile_to(previews_yaml)
    venv_bin = os.path.dirname(sys.executable)
    previews = cap.cli(
        "run", previews_yaml,
        env={**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
             "CAPSTAN_KFP_ENV_DIR": os.path.join(tempfile.gettempdir(), "capstan-test-kfp-envs")},
    )

    import mlflow

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    client = mlflow.MlflowClient(cap.url)
    exp = client.create_experiment("ui-compare")
    tracked = []
    for lr in (0.1, 0.5):
        run = client.create_run(exp, run_name=f"lr-{lr}")
        client.log_param(run.info.run_id, "lr", lr)
        for step in range(50):
            client.log_metric(run.info.run_id, "loss", 1.0 / (1 + lr * step), step=step)
        client.set_terminated(run.info.run_id)
        tracked.append(run.info.run_id)
    client.create_registered_model("ui-model", tags={"team": "vision"}, description="the model the UI shows")
    client.create_model_version("ui-model", f"runs:/{tracked[1]}/model", run_id=tracked[1])
    client.set_registered_model_alias("ui-model", "champion", "1")
    yield {
        "cap": cap,
        "quickstart": run_id_of(quick.stdout),
        "failing": run_id_of(failing.stdout + failing.stderr),
        "previews": run_id_of(previews.stdout),
        "experiment": exp,
        "tracked": tracked,
    }
    cap.stop()


def shot(page, shots, name):
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def test_home_then_run_detail(env, page, shots):
    url = env["cap"].url
    page.goto(url + "/")
    page.get_by_role("heading", name="Overview").wait_for()
    assert page.locator("a.count").first.inner_text().startswith("3")
    failures = page.locator("section.card", has=page.get_by_role("heading", name="Recent failures"))
    assert "ui-failing" in failures.inner_text() and "quickstart" not in failures.inner_text()
    assert "Nothing is running." in page.locator("section.card", has=page.get_by_role("heading", name="Running now")).inner_text()
    recent = page.locator("section.card", has=page.get_by_role("heading", name="Recent runs"))
    assert recent.locator("tbody tr").count() == 3
    shot(page, shots, "home")
    page.locator(f"a[href='/runs/{env['quickstart']}']").first.click()
    page.wait_for_url(f"**/runs/{env['quickstart']}")
    page.locator("svg#dag g.node").first.wait_for()
    statuses = page.locator("svg#dag g.node").evaluate_all("ns => ns.map(n => n.dataset.status)")
    assert statuses == ["succeeded"] * 6, statuses
    # The run's params and its artifacts sit under the graph.
    info = page.locator("#info")
    assert "learning_rates" in info.inner_text() or "rows" in info.inner_text(), info.inner_text()
    assert info.locator("a", has_text="model_card").count() == 1
    # Open the fan-out step from the keyboard: focus its node, press Enter.
    page.locator("svg#dag g.node[data-id='train']").focus()
    page.keyboard.press("Enter")
    page.locator("#task-panel h2", has_text="train[0]").wait_for()
    page.locator("#task-panel [data-task='train[2]']").click()
    page.locator("#task-panel h2", has_text="train[2]").wait_for()
    panel = page.locator("#task-panel").inner_text()
    for field in ("attempts", "exit code", "cache key", "resources", "cpu", "Inputs", "Outputs"):
        assert field in panel, (field, panel)
    # Inputs and outputs link to their artifacts: the split's train set in, a model out.
    assert page.locator("#task-panel a[href^='/artifacts/']").count() >= 2
    page.wait_for_function("document.querySelector('#log').dataset.complete === '1'")
    shot(page, shots, "run-detail")
    # The back button returns to the home page, rendered again.
    page.go_back()
    page.get_by_role("heading", name="Overview").wait_for()


def test_failing_step_log_is_searchable(env, page, shots):
    page.goto(f"{env['cap'].url}/runs/{env['failing']}?task=boom")
    panel = page.locator("#task-panel")
    panel.wait_for()
    page.wait_for_function("document.querySelector('#log').textContent.includes('about to fail')")
    assert "exit code3" in panel.inner_text().replace("\n", "").replace("\t", "")
    assert page.locator("#run-status").inner_text() == "failed"
    page.fill("#log-search", "fire")
    page.locator("#log mark").first.wait_for()
    assert page.locator("#log").inner_text().strip() == "the disk is on fire"
    shot(page, shots, "step-log")


def test_live_run_dag_changes_status(env, page, shots):
    cap = env["cap"]
    slow_yaml = os.path.join(cap.home, "slow.yaml")
    with open(slow_yaml, "w") as f:
        f.write(SLOW)
    detached = cap.cli("run", slow_yaml, "--detach")
    run_id = run_id_of(detached.stdout + detached.stderr)
    page.goto(f"{cap.url}/runs/{run_id}?task=first")
    page.locator("svg#dag g.node[data-id='first'][data-status='running']").wait_for(timeout=15000)
    page.evaluate("window.__same_page = true")
    page.wait_for_function("document.querySelector('#log').textContent.includes('first starts')")
    shot(page, shots, "live-run")
    page.locator("svg#dag g.node[data-id='second'][data-status='succeeded']").wait_for(timeout=30000)
    page.locator("#run-status", has_text="succeeded").wait_for()
    # The updates came over server-sent events, not from reloading the page.
    assert page.evaluate("window.__same_page") is True
    page.wait_for_function("document.querySelector('#log').textContent.includes('first ends')")


def test_artifact_previews_and_lineage(env, page, shots):
    url = env["cap"].url
    detail = get(f"{url}/api/v1/runs/{env['quickstart']}")
    by_name = {a["name"]: a for a in detail["artifacts"]}
    page.goto(f"{url}/runs/{env['quickstart']}")
    page.locator("a", has_text="model_card").click()
    page.wait_for_url(f"**/artifacts/{by_name['model_card']['id']}")
    page.locator("#preview .md").wait_for()
    shot(page, shots, "artifact-markdown")
    page.goto(f"{url}/artifacts/{by_name['dataset']['id']}")
    page.locator("#preview table.csv").wait_for()
    assert page.locator("#preview table.csv tbody tr").count() > 10
    assert "Download" in page.locator("main").inner_text()
    shot(page, shots, "artifact-csv")
    page.get_by_role("link", name="Lineage").click()
    page.wait_for_url("**/lineage/**")
    page.locator("svg#lineage g.node").first.wait_for()
    assert page.locator("svg#lineage g.node.artifact").count() >= 3
    assert page.locator("svg#lineage g.node:not(.artifact)").count() >= 2
    shot(page, shots, "lineage")
    page.locator("svg#lineage g.node[data-id^='task:']").first.click()
    page.wait_for_url("**/runs/**")


def test_artifact_previews_of_each_kind(env, page, shots):
    url = env["cap"].url
    detail = get(f"{url}/api/v1/runs/{env['previews']}")
    by_name = {a["name"]: a for a in detail["artifacts"]}
    assert {"metrics", "scores", "page", "notes", "config", "plot"} <= set(by_name), sorted(by_name)

    def open_artifact(name):
        page.goto(f"{url}/artifacts/{by_name[name]['id']}")
        page.locator("#preview > *").first.wait_for()
        return page.locator("#preview")

    # KFP ClassificationMetrics: the confusion matrix as a table, and the ROC curve.
    preview = open_artifact("scores")
    matrix = preview.locator("table.cm")
    assert matrix.locator("thead").inner_text().split()[-2:] == ["cat", "dog"]
    assert [c.inner_text() for c in matrix.locator("tbody td").all()] == ["5", "1", "2", "7"]
    assert preview.locator("canvas.roc").count() == 1
    shot(page, shots, "artifact-classification")
    # KFP Metrics: the logged values.
    assert "accuracy" in open_artifact("metrics").inner_text() and "0.93" in page.locator("#preview").inner_text()
    # HTML renders in a sandboxed frame, and its script does not run.
    preview = open_artifact("page")
    assert preview.locator("iframe").get_attribute("sandbox") == ""
    page.frame_locator("#preview iframe").locator("h1", has_text="Report").wait_for()
    assert page.title() != "escaped"
    shot(page, shots, "artifact-html")
    # Plain text, JSON (pretty-printed) and an image.
    assert open_artifact("notes").locator("pre").inner_text() == "plain notes\nsecond line\n"
    assert json.loads(open_artifact("config").locator("pre").inner_text()) == {"depth": 3, "layers": [1, 2]}
    assert '\n  "depth": 3' in page.locator("#preview pre").inner_text()
    image = open_artifact("plot").locator("img")
    page.wait_for_function("document.querySelector('#preview img').complete")
    assert image.evaluate("img => img.naturalWidth") == 2


def test_runs_list_filters_on_the_server(env, page, shots):
    page.goto(env["cap"].url + "/runs")
    page.locator("#runs tbody tr").first.wait_for()
    page.select_option("select[name=status]", "failed")
    page.click("form#f button.primary")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 1")
    assert "status=failed" in page.url
    assert page.locator("#runs tbody").inner_text().count("failed") == 1
    shot(page, shots, "runs")
    # By pipeline and creation time: the quickstart, created within the last hour.
    page.select_option("select[name=status]", "")
    page.fill("input[name=pipeline]", "quickstart")
    page.select_option("select[name=since]", "3600000")
    page.click("form#f button.primary")
    page.wait_for_function("[...document.querySelectorAll('#runs tbody tr')].length === 1")
    assert "pipeline=quickstart" in page.url and "since=3600000" in page.url
    assert "quickstart" in page.locator("#runs tbody").inner_text()
    # Sorting asks the server again: by duration, longest first, then shortest first.
    page.goto(env["cap"].url + "/runs")
    page.locator("#runs tbody tr").first.wait_for()
    page.click("#runs th button[data-sort='duration']")
    page.locator("#runs th[aria-sort='descending'] button[data-sort='duration']").wait_for()
    assert "sort=duration" in page.url
    page.click("#runs th button[data-sort='duration']")
    page.locator("#runs th[aria-sort='ascending'] button[data-sort='duration']").wait_for()
    assert "order=asc" in page.url


def test_experiment_table_filter_and_compare(env, page, shots):
    url = env["cap"].url
    page.goto(f"{url}/experiments?exp={env['experiment']}")
    page.locator("#exp-runs tbody tr").first.wait_for()
    assert page.locator("#exp-runs tbody tr").count() == 2
    page.fill("input[name=filter]", "params.lr = '0.5'")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#exp-runs tbody tr').length === 1")
    assert "lr-0.5" in page.locator("#exp-runs tbody").inner_text()
    shot(page, shots, "experiments")
    # Sort by the loss column: the server orders with MLflow's grammar (lr-0.1 ends higher).
    page.fill("input[name=filter]", "")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#exp-runs tbody tr').length === 2")
    page.click("#exp-runs th button[data-order='metrics.`loss`']")
    page.locator("#exp-runs th[aria-sort='descending'] button[data-order='metrics.`loss`']").wait_for()
    assert "lr-0.1" in page.locator("#exp-runs tbody tr").first.inner_text()
    page.click("#exp-runs th button[data-order='metrics.`loss`']")
    page.locator("#exp-runs th[aria-sort='ascending'] button[data-order='metrics.`loss`']").wait_for()
    assert "lr-0.5" in page.locator("#exp-runs tbody tr").first.inner_text()
    for box in page.locator("#exp-runs input[type=checkbox]").all():
        box.check()
    page.click("#compare")
    page.wait_for_url("**/compare?runs=**")
    # The chart carries its point count once the server's points are drawn.
    chart = page.locator(".chart[data-metric='loss'][data-points]")
    chart.wait_for()
    assert chart.get_attribute("data-points") == "100"
    box = chart.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.locator(".chart .tip").wait_for()
    assert "lr-0.1" in page.locator(".chart .tip").inner_text()
    shot(page, shots, "compare")
    # Drag across the middle half: the server is asked for that step window only.
    left, right = box["x"] + 56, box["x"] + box["width"] - 12
    with page.expect_request(lambda r: "get-history-bulk-interval" in r.url and "start_step" in r.url) as zoom:
        page.mouse.move(left + (right - left) * 0.25, box["y"] + 40)
        page.mouse.down()
        page.mouse.move(left + (right - left) * 0.75, box["y"] + 40, steps=5)
        page.mouse.up()
    start, end = (int(re.search(rf"{k}=(-?\d+)", zoom.value.url).group(1)) for k in ("start_step", "end_step"))
    assert 8 <= start <= 16 and 33 <= end <= 41, (start, end)
    page.locator(".chart[data-metric='loss'][data-view]").wait_for()
    assert int(chart.get_attribute("data-points")) == 2 * (end - start + 1)
    chart.locator("canvas").dblclick()
    page.wait_for_function("!document.querySelector(\".chart[data-metric='loss']\").dataset.view")
    assert chart.get_attribute("data-points") == "100"
    # Against time: the same points, by timestamp.
    page.get_by_role("link", name="time", exact=True).click()
    page.wait_for_url("**x=time**")
    # The page marks <main> with its point count once every chart of the new axis is drawn.
    page.wait_for_function("document.getElementById('main').dataset.points === '100'")
    assert page.locator(".chart[data-metric='loss']").get_attribute("data-points") == "100"


def test_registered_model(env, page, shots):
    page.goto(env["cap"].url + "/models")
    page.get_by_role("link", name="ui-model").click()
    page.wait_for_url("**/models/ui-model")
    page.locator("#versions tbody tr").first.wait_for()
    text = page.locator("main").inner_text()
    assert "@champion" in text and "team" in text
    page.locator("#versions a[href^='/runs/']").click()
    page.wait_for_url(f"**/runs/{env['tracked'][1]}")
    page.get_by_role("heading", name=re.compile("lr-0.5")).wait_for()
    shot(page, shots, "model")


def test_a_steps_tracking_run_links_its_pipeline_run(env, page):
    """A model registered from a step points at the step's tracking run; from there the pipeline
    run, with its graph, artifacts and lineage, is one click away."""
    url = env["cap"].url
    detail = get(f"{url}/api/v1/runs/{env['quickstart']}")
    data = next(t for t in detail["tasks"] if t["name"] == "data")
    page.goto(f"{url}/runs/{data['id']}")
    page.locator("#parent-run").click()
    page.wait_for_url(f"**/runs/{env['quickstart']}")
    page.locator("svg#dag g.node").first.wait_for()
    page.locator("#info a", has_text="lineage").first.click()
    page.locator("svg#lineage g.node").first.wait_for()


def test_deep_link_and_unknown_api_path(env, page):
    url = env["cap"].url
    page.goto(f"{url}/runs?status=succeeded")
    page.locator("#runs tbody tr").first.wait_for()
    assert page.locator("select[name=status]").input_value() == "succeeded"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/api/v1/nothing-here")
    assert err.value.code == 404


def test_pages_fit_a_laptop_screen(env, page):
    """At 1280x800 no page scrolls sideways: wide tables scroll inside their own box."""
    url = env["cap"].url
    page.set_viewport_size({"width": 1280, "height": 800})
    pages = {
        "/": "a.count",
        "/runs": "#runs tbody tr",
        f"/runs/{env['quickstart']}?task=data": "#task-panel",
        f"/experiments?exp={env['experiment']}": "#exp-runs tbody tr",
        "/compare?runs=" + ",".join(env["tracked"]): ".chart[data-points]",
        "/models/ui-model": "#versions tbody tr",
    }
    for path, selector in pages.items():
        page.goto(url + path)
        page.locator(selector).first.wait_for()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
