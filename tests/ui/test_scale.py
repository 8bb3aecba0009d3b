"""The UI at scale: 10,000 pipeline runs in 100 experiments, and a chart of 5 runs x 100,000
points. The store is filled with bulk SQL (the schema of crates/store/migrations/sqlite) so that
generating it takes seconds, then the pages are timed in the browser, from navigation start to
the table or chart on screen. The figures are printed, never asserted; BENCHMARKS.md records
them."""

import os
import random
import sqlite3
import time
import uuid

import pytest
from conftest import Capstan

RUNS = 10_000
EXPERIMENTS = 100
CHART_RUNS = 5
POINTS = 100_000


def fill(db):
    rnd = random.Random(7)
    con = sqlite3.connect(db)
    now = int(time.time() * 1000)
    cur = con.cursor()
    exps = [(1000 + i, f"scale-{i:03}", None, "active", now, now) for i in range(EXPERIMENTS)]
    cur.executemany("INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?)", exps)
    pipelines = []
    contexts = []
    for i in range(10):
        pid = uuid.uuid4().hex
        pipelines.append((pid, f"pipeline-{i}", f"blake3:{i:064x}", '{"name": "x", "steps": {}}', None, now))
        contexts.append((f"pctx-{i}", "pipeline", f"pipeline-{i}", now))
    cur.executemany("INSERT INTO pipelines VALUES (?, ?, ?, ?, ?, ?)", pipelines)
    runs, tracking, params, latest = [], [], [], []
    statuses = ["succeeded"] * 7 + ["failed", "running", "cancelled"]
    for n in range(RUNS):
        rid = uuid.uuid4().hex
        p = n % 10
        exp = 1000 + n % EXPERIMENTS
        created = now - (RUNS - n) * 60_000
        contexts.append((f"rctx-{n}", "run", rid, created))
        status = rnd.choice(statuses)
        ended = None if status == "running" else created + rnd.randint(1_000, 600_000)
        runs.append((rid, pipelines[p][0], exp, status, '{"lr": 0.1}', "{}", "pipeline.yaml", created,
                     created, ended, None, 0, None, f"pctx-{p}", f"rctx-{n}"))
        tracking.append((rid, exp, f"run-{n}", "scale", "FINISHED", created, ended, "active", f"file:///x/{rid}"))
        params += [(rid, "lr", str(rnd.choice([0.01, 0.1, 0.5]))), (rid, "batch", str(rnd.choice([32, 64])))]
        latest += [(rid, "loss", 0, created, rnd.random(), 0), (rid, "accuracy", 0, created, rnd.random(), 0)]
    cur.executemany("INSERT INTO contexts VALUES (?, ?, ?, ?)", contexts)
    cur.executemany(
        "INSERT INTO runs (id, pipeline_id, experiment_id, status, params, options, source, created_at, "
        "started_at, ended_at, message, cancel_requested, owner, pipeline_context_id, run_context_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        runs,
    )
    cur.executemany(
        "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, end_time, "
        "lifecycle_stage, artifact_uri) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        tracking,
    )
    cur.executemany("INSERT INTO tracking_params VALUES (?, ?, ?)", params)
    cur.executemany("INSERT INTO tracking_latest_metrics VALUES (?, ?, ?, ?, ?, ?)", latest)
    chart_ids = [t[0] for t in tracking[:CHART_RUNS]]
    for k, rid in enumerate(chart_ids):
        points = ((rid, "loss", s, now + s, 1.0 / (1 + 0.001 * s * (k + 1)) + rnd.random() * 0.01, 0) for s in range(POINTS))
        cur.executemany("INSERT INTO tracking_metrics VALUES (?, ?, ?, ?, ?, ?)", points)
        cur.execute("DELETE FROM tracking_latest_metrics WHERE run_id = ? AND key = 'loss'", (rid,))
        cur.execute("INSERT INTO tracking_latest_metrics VALUES (?, 'loss', ?, ?, 0.5, 0)", (rid, POINTS - 1, now + POINTS - 1))
    con.commit()
    con.close()
    return chart_ids


@pytest.fixture(scope="module")
def big():
    cap = Capstan("capstan-ui-scale-")
    cap.cli("runs", "list")  # creates the store
    started = time.time()
    chart_ids = fill(os.path.join(cap.home, "capstan.db"))
    print(f"\ngenerated {RUNS} runs, {EXPERIMENTS} experiments, {CHART_RUNS}x{POINTS} points in {time.time() - started:.1f}s")
    cap.start()
    yield cap, chart_ids
    cap.stop()


def timed(page, url, selector):
    """Milliseconds from navigation start until `selector` is on screen; the median of 3 loads."""
    figures = []
    for _ in range(3):
        page.goto(url)
        try:
            page.locator(selector).first.wait_for(timeout=60_000)
        except Exception as err:
            raise AssertionError(f"{url}: {selector} not shown; the page says: {page.locator('main').inner_text()[:500]}") from err
        figures.append(page.evaluate("performance.now()"))
    return sorted(figures)[1]


def api_requests(page, url, selector):
    """The API requests a page makes until `selector` is on screen."""
    seen = []

    def note(request):
        if "/api/" in request.url or "/ajax-api/" in request.url:
            seen.append(request.url)

    page.on("request", note)
    page.goto(url)
    page.locator(selector).first.wait_for(timeout=60_000)
    page.remove_listener("request", note)
    return seen


def test_pages_ask_a_fixed_number_of_requests_however_many_rows(big, page):
    cap, chart_ids = big
    runs = api_requests(page, cap.url + "/runs", "#runs tbody tr")
    assert len(runs) == 1, runs
    exps = api_requests(page, cap.url + "/experiments?exp=1042", "#exp-runs tbody tr")
    assert len(exps) == 2, exps
    # Five runs: the experiments, one search for the runs, and one request per metric chart.
    charts = api_requests(page, cap.url + "/compare?runs=" + ",".join(chart_ids), ".chart[data-metric='loss'][data-points]")
    page.wait_for_function("document.getElementById('main').dataset.points !== undefined")
    assert not [u for u in charts if "runs/get" in u], charts
    assert len([u for u in charts if "get-history-bulk-interval" in u]) == page.locator(".chart").count()
    assert len(charts) == 2 + page.locator(".chart").count(), charts


def test_large_store_render_times(big, page, shots):
    cap, chart_ids = big
    runs_ms = timed(page, cap.url + "/runs", "#runs tbody tr")
    assert f"of {RUNS}" in page.locator(".pager").inner_text()
    page.screenshot(path=os.path.join(shots, "scale-runs.png"))
    sorted_ms = timed(page, cap.url + "/runs?sort=duration&status=failed", "#runs tbody tr")
    exp_ms = timed(page, cap.url + "/experiments?exp=1042", "#exp-runs tbody tr")
    assert page.locator("#exp-runs tbody tr").count() == RUNS // EXPERIMENTS
    page.screenshot(path=os.path.join(shots, "scale-experiments.png"))
    chart_ms = timed(page, cap.url + "/compare?runs=" + ",".join(chart_ids), ".chart[data-metric='loss'][data-points]")
    drawn = int(page.locator(".chart[data-metric='loss']").get_attribute("data-points"))
    page.screenshot(path=os.path.join(shots, "scale-compare.png"))
    print(f"\nui render times (navigation start to content, median of 3, ms):")
    print(f"  runs list, {RUNS} runs, first page of 50:           {runs_ms:8.0f}")
    print(f"  runs list, failed only, sorted by duration:       {sorted_ms:8.0f}")
    print(f"  experiments table, {EXPERIMENTS} experiments, 100 runs: {exp_ms:8.0f}")
    print(f"  compare chart, {CHART_RUNS} runs x {POINTS} points ({drawn} drawn): {chart_ms:8.0f}")
