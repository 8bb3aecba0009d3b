"""The unmodified mlflow client against a live `capstan server`."""

import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_health_version_and_metrics(server_url, client):
    with urllib.request.urlopen(server_url + "/version") as resp:
        assert resp.read().decode()
    client.search_experiments()
    with urllib.request.urlopen(server_url + "/metrics") as resp:
        assert "capstan_http_requests_total" in resp.read().decode()


def test_default_experiment_and_experiment_lifecycle(client):
    default = client.get_experiment("0")
    assert default.name == "Default"
    name = unique("exp")
    exp_id = client.create_experiment(name, tags={"team": "a"})
    exp = client.get_experiment_by_name(name)
    assert exp.experiment_id == exp_id
    assert exp.tags["team"] == "a"
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    client.set_experiment_tag(exp_id, "stage", "dev")
    client.delete_experiment_tag(exp_id, "team")
    assert client.get_experiment(exp_id).tags == {"stage": "dev"}
    client.rename_experiment(exp_id, name + "-renamed")
    assert client.get_experiment(exp_id).name == name + "-renamed"
    client.delete_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "deleted"
    assert exp_id not in [e.experiment_id for e in client.search_experiments()]
    client.restore_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "active"
    assert client.get_experiment_by_name(unique("missing")) is None
    with pytest.raises(MlflowException) as err:
        client.create_experiment(name + "-renamed")
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_missing_experiment_by_name_is_404(server_url):
    req = urllib.request.Request(
        server_url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=nope-" + uuid.uuid4().hex
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 404
    assert json.loads(err.value.read())["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_search_experiments_filter_and_pages(client):
    prefix = unique("search")
    ids = [client.create_experiment(f"{prefix}-{i}") for i in range(5)]
    found = client.search_experiments(filter_string=f"name LIKE '{prefix}-%'", order_by=["name ASC"])
    assert [e.experiment_id for e in found] == ids
    page = client.search_experiments(filter_string=f"name LIKE '{prefix}%'", max_results=2)
    assert len(page) == 2 and page.token
    rest = client.search_experiments(filter_string=f"name LIKE '{prefix}%'", max_results=10, page_token=page.token)
    assert len(rest) == 3


def test_fluent_run_with_params_metrics_tags_and_nested_runs(client):
    mlflow.set_experiment(unique("fluent"))
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"depth": 3, "kind": "tree"})
        mlflow.log_param("lr", 0.1)  # the same value again is fine
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metric("weird", float("nan"))
        mlflow.log_metrics({"inf": float("inf"), "ninf": float("-inf")})
        mlflow.set_tag("owner", "me")
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("acc", 0.9)
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "parent"
    assert run.data.params == {"lr": "0.1", "depth": "3", "kind": "tree"}
    assert run.data.metrics["loss"] == pytest.approx(0.2)
    assert math.isnan(run.data.metrics["weird"])
    assert run.data.metrics["inf"] == float("inf") and run.data.metrics["ninf"] == float("-inf")
    assert run.data.tags["owner"] == "me"
    assert run.info.artifact_uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    child_run = client.get_run(child.info.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    with pytest.raises(MlflowException) as err:
        client.log_param(parent.info.run_id, "lr", 0.2)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def post(server_url, endpoint, body):
    req = urllib.request.Request(
        server_url + "/api/2.0/mlflow/" + endpoint,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return urllib.request.urlopen(req)


def test_log_batch_is_idempotent_and_limited(server_url, client):
    exp = client.create_experiment(unique("batch"))
    run = client.create_run(exp)
    now = int(time.time() * 1000)
    metrics = [Metric("m", float(i), now, i) for i in range(1000)]
    for _ in range(3):
        client.log_batch(run.info.run_id, metrics=metrics)
    client.log_batch(run.info.run_id, metrics=[Metric("m", float(i), now, i) for i in range(1000, 3000)][:1000])
    client.log_batch(run.info.run_id, metrics=[Metric("m", float(i), now, i) for i in range(2000, 3000)])
    client.log_batch(run.info.run_id, params=[Param("p", "1")], tags=[RunTag("t", "x")])
    history = client.get_metric_history(run.info.run_id, "m")
    assert len(history) == 3000
    assert client.get_run(run.info.run_id).data.metrics["m"] == 2999.0
    # The client splits big batches itself: send an oversized one by hand.
    params = [{"key": f"k{i}", "value": "v"} for i in range(101)]
    with pytest.raises(urllib.error.HTTPError) as err:
        post(server_url, "runs/log-batch", {"run_id": run.info.run_id, "params": params})
    assert err.value.code == 400
    assert json.loads(err.value.read())["error_code"] == "INVALID_PARAMETER_VALUE"


def bulk_interval(server_url, **query):
    """`metrics/get-history-bulk-interval`, the request MLflow's UI draws its charts with."""
    url = server_url + "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?"
    with urllib.request.urlopen(url + urllib.parse.urlencode(query, doseq=True)) as resp:
        return json.loads(resp.read())["metrics"]


def test_history_bulk_interval_samples_long_histories(server_url, client):
    exp = client.create_experiment(unique("bulk"))
    now = int(time.time() * 1000)
    long_run = client.create_run(exp).info.run_id
    points = [Metric("loss", 1.0 / (1 + s) if s != 3210 else 50.0, now + s, s) for s in range(5000)]
    for i in range(0, len(points), 1000):
        client.log_batch(long_run, metrics=points[i : i + 1000])
    short_run = client.create_run(exp).info.run_id
    client.log_batch(short_run, metrics=[Metric("loss", float(s), now, s) for s in range(0, 50, 5)])

    got = bulk_interval(server_url, run_ids=[long_run, short_run], metric_key="loss", max_results=100)
    long = [m for m in got if m["run_id"] == long_run]
    short = [m for m in got if m["run_id"] == short_run]
    assert 2 <= len(long) <= 100
    steps = [m["step"] for m in long]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 4999
    assert any(m["step"] == 3210 and m["value"] == 50.0 for m in long), "the spike survives"
    assert all(m["key"] == "loss" and m["timestamp"] == now + m["step"] for m in long)
    # A short history comes back whole, as get_metric_history has it.
    history = client.get_metric_history(short_run, "loss")
    assert [(m["step"], m["value"]) for m in short] == [(m.step, m.value) for m in history]

    # A zoomed window: only its steps, its ends included.
    window = bulk_interval(server_url, run_ids=[long_run], metric_key="loss", max_results=40,
                          start_step=1000, end_step=1999)
    assert len(window) <= 40
    assert window[0]["step"] == 1000 and window[-1]["step"] == 1999
    assert all(1000 <= m["step"] <= 1999 for m in window)
    one = bulk_interval(server_url, run_ids=[long_run], metric_key="loss", max_results=1)
    assert [m["step"] for m in one] == [4999]

    for bad in ({"max_results": 0}, {"max_results": 2501}, {"start_step": 5},
                {"start_step": 9, "end_step": 3}):
        with pytest.raises(urllib.error.HTTPError) as err:
            bulk_interval(server_url, run_ids=[long_run], metric_key="loss", **bad)
        assert err.value.code == 400, bad
        assert json.loads(err.value.read())["error_code"] == "INVALID_PARAMETER_VALUE"
    with pytest.raises(urllib.error.HTTPError) as err:
        bulk_interval(server_url, run_ids=["0" * 32], metric_key="loss")
    assert err.value.code == 404
    assert json.loads(err.value.read())["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_search_runs_filters_order_and_pages(client):
    exp = client.create_experiment(unique("runs"))
    ids = []
    for i in range(7):
        run = client.create_run(exp, run_name=f"r{i}", tags={"group": "even" if i % 2 == 0 else "odd"})
        client.log_metric(run.info.run_id, "acc", i / 10)
        client.log_param(run.info.run_id, "i", str(i))
        if i < 6:
            client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    found = client.search_runs([exp], "metrics.acc >= 0.3 AND tags.group = 'even'", order_by=["metrics.acc DESC"])
    assert [r.info.run_name for r in found] == ["r6", "r4"]
    found = client.search_runs([exp], "attributes.status = 'RUNNING'")
    assert [r.info.run_id for r in found] == [ids[6]]
    found = client.search_runs([exp], "params.i IN ('1', '2') AND attributes.run_name LIKE 'r%'", order_by=["params.i ASC"])
    assert [r.info.run_name for r in found] == ["r1", "r2"]
    found = client.search_runs([exp], "tags.`mlflow.runName` ILIKE 'R3'")
    assert [r.info.run_name for r in found] == ["r3"]
    default_order = client.search_runs([exp])
    starts = [r.info.start_time for r in default_order]
    assert starts == sorted(starts, reverse=True)
    pages, token = [], None
    while True:
        page = client.search_runs([exp], max_results=3, page_token=token, order_by=["metrics.acc ASC"])
        pages.append([r.info.run_name for r in page])
        token = page.token
        if not token:
            break
    assert pages == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    client.delete_run(ids[0])
    assert len(client.search_runs([exp])) == 6
    assert len(client.search_runs([exp], run_view_type=mlflow.entities.ViewType.DELETED_ONLY)) == 1
    client.restore_run(ids[0])
    with pytest.raises(MlflowException) as err:
        client.search_runs([exp], "metrics.acc >> 1")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_tags_and_inputs(client):
    exp = client.create_experiment(unique("tags"))
    run = client.create_run(exp)
    client.set_tag(run.info.run_id, "a", "1")
    client.delete_tag(run.info.run_id, "a")
    assert "a" not in client.get_run(run.info.run_id).data.tags
    client.update_run(run.info.run_id, name="renamed")
    assert client.get_run(run.info.run_id).info.run_name == "renamed"
    import pandas as pd

    dataset = mlflow.data.from_pandas(pd.DataFrame({"x": [1, 2]}), name="tiny")
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_input(dataset, context="training")
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["tiny"]
    found = client.search_runs([exp], "datasets.name = 'tiny'")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_artifacts_upload_list_download_and_delete(client, tmp_path):
    mlflow.set_experiment(unique("artifacts"))
    with mlflow.start_run() as run:
        (tmp_path / "notes.txt").write_text("hello")
        mlflow.log_artifact(str(tmp_path / "notes.txt"))
        sub = tmp_path / "dir"
        sub.mkdir()
        (sub / "a.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        mlflow.log_artifacts(str(sub), artifact_path="data")
        mlflow.log_dict({"k": 1}, "conf/d.json")
        mlflow.log_text("text body", "t.txt")
    run_id = run.info.run_id
    listed = {f.path: f for f in client.list_artifacts(run_id)}
    assert set(listed) == {"notes.txt", "data", "conf", "t.txt"}
    assert listed["data"].is_dir and listed["notes.txt"].file_size == 5
    root = run.info.artifact_uri
    assert [f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{root}/data")] == ["data/a.bin"]
    out = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/data", dst_path=str(tmp_path / "out"))
    assert (tmp_path / "out" / "data" / "a.bin").read_bytes() == (sub / "a.bin").read_bytes()
    assert out
    assert mlflow.artifacts.load_text(f"{root}/t.txt") == "text body"
    assert mlflow.artifacts.load_dict(f"{root}/conf/d.json") == {"k": 1}


def test_artifact_paths_cannot_escape(server_url):
    req = urllib.request.Request(
        server_url + "/api/2.0/mlflow-artifacts/artifacts?path=../../etc"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400


def test_unknown_endpoint_and_unknown_run_are_4xx(server_url, client):
    with pytest.raises(MlflowException) as err:
        client.get_run("0" * 32)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    req = urllib.request.Request(server_url + "/api/2.0/mlflow/nothing/here")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 404


def _train():
    from sklearn.linear_model import LinearRegression

    x = [[0.0], [1.0], [2.0], [3.0]]
    return LinearRegression().fit(x, [1.0, 3.0, 5.0, 7.0]), [[4.0]]


def test_logged_model_loads_through_runs_uri(client):
    import mlflow.sklearn

    model, x = _train()
    mlflow.set_experiment(unique("logged"))
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model")
    assert info.model_id.startswith("m-")
    logged = client.get_logged_model(info.model_id)
    assert logged.status.to_int() == 2
    assert logged.source_run_id == run.info.run_id
    assert logged.artifact_location.endswith(f"/models/{info.model_id}/artifacts")
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    assert loaded.predict(x)[0] == pytest.approx(9.0)
    client.set_logged_model_tags(info.model_id, {"team": "a"})
    assert client.get_logged_model(info.model_id).tags["team"] == "a"
    client.delete_logged_model_tag(info.model_id, "team")
    assert "team" not in client.get_logged_model(info.model_id).tags
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string="name = 'model'")
    assert [m.model_id for m in found] == [info.model_id]
    client.delete_logged_model(info.model_id)
    with pytest.raises(MlflowException) as err:
        client.get_logged_model(info.model_id)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_model_registry_aliases_stages_and_search(client):
    import mlflow.sklearn

    model, x = _train()
    name = unique("reg")
    mlflow.set_experiment(unique("registry"))
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    assert version.version == "1" and version.status == "READY"
    client.set_registered_model_alias(name, "champion", 1)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert mlflow.sklearn.load_model(f"models:/{name}@champion").predict(x)[0] == pytest.approx(9.0)
    assert mlflow.sklearn.load_model(f"models:/{name}/1").predict(x)[0] == pytest.approx(9.0)
    assert name in [m.name for m in client.search_registered_models()]
    assert [m.name for m in client.search_registered_models(filter_string=f"name = '{name}'")] == [name]
    client.set_registered_model_tag(name, "owner", "me")
    assert client.get_registered_model(name).tags == {"owner": "me"}
    client.delete_registered_model_tag(name, "owner")
    client.transition_model_version_stage(name, "1", "Production")
    latest = client.get_latest_versions(name, stages=["Production"])
    assert [v.version for v in latest] == ["1"]
    client.set_model_version_tag(name, "1", "k", "v")
    assert client.get_model_version(name, "1").tags == {"k": "v"}
    client.update_model_version(name, "1", description="first")
    assert client.get_model_version(name, "1").description == "first"
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    client.delete_registered_model_alias(name, "champion")
    with pytest.raises(MlflowException) as err:
        client.get_model_version_by_alias(name, "champion")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as err:
        client.create_registered_model(name)
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"
    client.rename_registered_model(name, name + "-new")
    assert client.get_model_version(name + "-new", "1").current_stage == "Production"
    client.delete_model_version(name + "-new", "1")
    client.delete_registered_model(name + "-new")
    with pytest.raises(MlflowException) as err:
        client.get_registered_model(name + "-new")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_log_model_registers_and_registry_search_skips_prompts(server_url, client):
    import mlflow.sklearn

    model, x = _train()
    name = unique("direct")
    prompt = unique("prompt")
    # The client refuses to create prompts as models; a prompt is a model with this tag.
    tag = {"key": "mlflow.prompt.is_prompt", "value": "true"}
    post(server_url, "registered-models/create", {"name": prompt, "tags": [tag]})
    mlflow.set_experiment(unique("direct"))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name)
    assert str(info.registered_model_version) == "1"
    version = client.get_model_version(name, "1")
    assert version.source == f"models:/{info.model_id}" and version.status == "READY"
    assert mlflow.sklearn.load_model(f"models:/{name}/latest").predict(x)[0] == pytest.approx(9.0)
    names = [m.name for m in client.search_registered_models()]
    assert name in names and prompt not in names
    assert client.get_registered_model(name).latest_versions[0].version == "1"
    with pytest.raises(MlflowException) as err:
        client.get_registered_model(unique("missing"))
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as err:
        client.transition_model_version_stage(name, "1", "Sideways")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as err:
        client.get_model_version(name, "7")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_metrics_logged_against_a_logged_model(client):
    import mlflow.sklearn
    import pandas as pd

    model, _ = _train()
    mlflow.set_experiment(unique("model-metrics"))
    dataset = mlflow.data.from_pandas(pd.DataFrame({"x": [1, 2]}), name="eval")
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model")
        mlflow.log_metric("rmse", 0.5, step=1, model_id=info.model_id)
        mlflow.log_metric("rmse", 0.25, step=2, model_id=info.model_id, dataset=dataset)
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id, metrics=[Metric("mae", 0.1, now, 0, model_id=info.model_id)]
        )
        # After log_model the client links fluent metrics to the model it just logged.
        mlflow.log_metric("linked", 1.0)
    logged = client.get_logged_model(info.model_id)
    points = sorted((m.key, m.step, m.value, m.dataset_name) for m in logged.metrics)
    assert points == [
        ("linked", 0, 1.0, None),
        ("mae", 0, 0.1, None),
        ("rmse", 1, 0.5, None),
        ("rmse", 2, 0.25, "eval"),
    ]
    assert {m.run_id for m in logged.metrics} == {run.info.run_id}
    # The points are the run's as well.
    assert client.get_run(run.info.run_id).data.metrics["rmse"] == 0.25
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(found[0].metrics) == 4
    with pytest.raises(MlflowException) as err:
        client.log_metric(run.info.run_id, "x", 1.0, model_id="m-" + "0" * 32)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_run_inputs_name_the_logged_models_a_run_used(client):
    import mlflow.sklearn
    from mlflow.entities import LoggedModelInput

    model, _ = _train()
    mlflow.set_experiment(unique("model-inputs"))
    with mlflow.start_run() as train:
        info = mlflow.sklearn.log_model(model, name="model")
    with mlflow.start_run() as evaluation:
        # A metric against a model that this run did not log makes the client log that model
        # as an input of the run (`runs/log-inputs` with `models`).
        mlflow.log_metric("rmse", 0.3, model_id=info.model_id)
        mlflow.log_metric("rmse", 0.2, step=1, model_id=info.model_id)
    evaluated = client.get_run(evaluation.info.run_id)
    assert [m.model_id for m in evaluated.inputs.model_inputs] == [info.model_id]
    assert client.get_run(train.info.run_id).inputs.model_inputs == []
    assert [o.model_id for o in client.get_run(train.info.run_id).outputs.model_outputs] == [info.model_id]
    # With run_id the client reads the run first; the stored input keeps it from logging again.
    mlflow.log_metric("mae", 0.1, model_id=info.model_id, run_id=evaluation.info.run_id)
    run = client.create_run(evaluation.info.experiment_id)
    client.log_inputs(run.info.run_id, models=[LoggedModelInput(info.model_id)])
    client.log_inputs(run.info.run_id, models=[LoggedModelInput(info.model_id)])
    inputs = client.get_run(run.info.run_id).inputs
    assert inputs.model_inputs == [LoggedModelInput(info.model_id)]
    assert inputs.dataset_inputs == []
    with pytest.raises(MlflowException) as err:
        client.log_inputs(run.info.run_id, models=[LoggedModelInput("m-" + "0" * 32)])
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_run(run.info.run_id).inputs.model_inputs == [LoggedModelInput(info.model_id)]


def test_server_info_and_latest_versions_by_get(server_url, client):
    with urllib.request.urlopen(server_url + "/api/3.0/mlflow/server-info") as resp:
        assert json.load(resp)["store_type"] == "SqlStore"
    name = unique("latest")
    client.create_registered_model(name)
    client.create_model_version(name, source="mlflow-artifacts:/0/none/artifacts/model")
    url = f"{server_url}/api/2.0/mlflow/registered-models/get-latest-versions?name={name}"
    with urllib.request.urlopen(url) as resp:
        versions = json.load(resp)["model_versions"]
    assert [(v["version"], v["status"]) for v in versions] == [("1", "READY")]


def test_concurrent_single_metrics_all_land_and_errors_stay_per_request(client):
    from concurrent.futures import ThreadPoolExecutor

    exp = client.create_experiment(unique("concurrent"))
    runs = [client.create_run(exp).info.run_id for _ in range(4)]

    def log(worker):
        for step in range(50):
            client.log_metric(runs[worker % 4], f"w{worker}", float(step), step=step)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(log, range(16)))
    for worker in range(16):
        history = client.get_metric_history(runs[worker % 4], f"w{worker}")
        assert [m.step for m in history] == list(range(50))
    assert client.get_run(runs[0]).data.metrics["w0"] == 49.0
    with pytest.raises(MlflowException) as err:
        client.log_metric("f" * 32, "x", 1.0)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_run(runs[1])
    with pytest.raises(MlflowException) as err:
        client.log_metric(runs[1], "x", 1.0)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
