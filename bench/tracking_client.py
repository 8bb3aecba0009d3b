"""One tracking-client workload against one server; prints one JSON object of figures.

    python bench/tracking_client.py URL [--repeats N] [--scale RUNS]

Every workload goes through the unmodified `mlflow` client (MlflowClient), as a user's code does.
Rates are medians over REPEATS rounds; latencies are medians over all calls of all rounds.

- log_metric:       single `log_metric` calls, one after another (calls/s)
- log_batch:        `log_batch` of 1000 metrics per call (metrics/s)
- run_lifecycle:    `create_run` + `log_param` + `set_terminated` (runs/s)
- search_runs:      `search_runs` with a filter and an order over 200 runs (ms)
- metric_history:   `get_metric_history` of a 300-point metric (ms)
- http_*:           the same requests through a bare `requests.Session` (calls/s or ms): the
                    difference to the client's figure is what the client itself costs.
- client_*:         the client's own cost: the same client calls with the HTTP exchange
                    replaced by the server's recorded answer (no network, no server). No server
                    can make a call through the client faster than this.
- ids:              the experiment searched, the run whose history is read and a run for
                    batches, for the server-side measurements of bench/tracking_server.lua.
- scale (optional): RUNS runs in one experiment, then `search_runs` with a filter and an order
                    (ms), measured through the client, plus how long loading the runs took.
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import uuid

import mlflow.utils.rest_utils
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


def now_ms():
    return int(time.time() * 1000)


def rate(count, fn, min_seconds=1.5, max_count=None):
    """Calls fn(i) until `count` calls are done and at least min_seconds passed (or max_count)."""
    start = time.perf_counter()
    done = 0
    while True:
        fn(done)
        done += 1
        elapsed = time.perf_counter() - start
        if max_count is not None and done >= max_count:
            break
        if done >= count and elapsed >= min_seconds:
            break
    return done / elapsed


def latencies(n, fn):
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0)
    args = parser.parse_args()
    # The client prints a line per finished run to stdout; only the figures go there.
    with contextlib.redirect_stdout(io.StringIO()):
        out = measure(args)
    json.dump(out, sys.stdout)
    print()


def search_both(client, session, url, exp, filt, expected, rounds):
    """Median ms of one filtered, ordered search: through the client, then as a bare request."""
    max_results = 100 if expected > 50 else 50

    def via_client():
        found = client.search_runs([exp], filt, order_by=["metrics.acc DESC"], max_results=max_results)
        assert len(found) == min(expected, max_results), len(found)

    body = {"experiment_ids": [exp], "filter": filt, "order_by": ["metrics.acc DESC"], "max_results": max_results}

    def bare():
        resp = session.post(url + "/api/2.0/mlflow/runs/search", json=body)
        resp.raise_for_status()
        assert len(resp.json()["runs"]) == min(expected, max_results)

    via_client()
    return statistics.median(latencies(rounds, via_client)), statistics.median(latencies(rounds, bare))


class _Recorded:
    """A recorded answer, in the shape the client reads from `requests`."""

    status_code = 200

    def __init__(self, text):
        self.text = text


def client_only(client, answers, rounds, calls):
    """Median ms of each of `calls` (name -> fn) with every HTTP exchange answered by
    answers[name], the server's recorded answer."""
    real = mlflow.utils.rest_utils.http_request
    out = {}
    try:
        for name, fn in calls.items():
            mlflow.utils.rest_utils.http_request = lambda text=answers[name], **_kw: _Recorded(text)
            fn()
            out[name] = statistics.median(latencies(rounds, fn))
    finally:
        mlflow.utils.rest_utils.http_request = real
    return out


def measure(args):
    client = MlflowClient(args.url)
    exp = client.create_experiment("bench-" + uuid.uuid4().hex[:8])
    out = {}

    run_id = client.create_run(exp).info.run_id
    out["log_metric_calls_per_s"] = statistics.median(
        rate(50, lambda i: client.log_metric(run_id, "m", float(i), step=i), max_count=3000)
        for _ in range(args.repeats)
    )

    session = requests.Session()
    endpoint = args.url + "/api/2.0/mlflow/runs/log-metric"

    def raw(i):
        body = {"run_id": run_id, "key": "raw", "value": float(i), "timestamp": now_ms(), "step": i}
        resp = session.post(endpoint, json=body)
        resp.raise_for_status()

    out["http_log_metric_calls_per_s"] = statistics.median(
        rate(50, raw, max_count=5000) for _ in range(args.repeats)
    )

    batch_run = client.create_run(exp).info.run_id
    step = [0]

    def batch(_):
        ts = now_ms()
        metrics = [Metric(f"b{j % 10}", float(j), ts, step[0] + j // 10) for j in range(1000)]
        step[0] += 100
        client.log_batch(batch_run, metrics=metrics)

    out["log_batch_metrics_per_s"] = statistics.median(
        1000 * rate(5, batch, max_count=300) for _ in range(args.repeats)
    )

    def raw_batch(_):
        ts = now_ms()
        metrics = [
            {"key": f"r{j % 10}", "value": float(j), "timestamp": ts, "step": step[0] + j // 10}
            for j in range(1000)
        ]
        step[0] += 100
        resp = session.post(
            args.url + "/api/2.0/mlflow/runs/log-batch", json={"run_id": batch_run, "metrics": metrics}
        )
        resp.raise_for_status()

    out["http_log_batch_metrics_per_s"] = statistics.median(
        1000 * rate(5, raw_batch, max_count=300) for _ in range(args.repeats)
    )

    def lifecycle(i):
        rid = client.create_run(exp).info.run_id
        client.log_param(rid, "i", str(i))
        client.set_terminated(rid)

    out["run_lifecycle_runs_per_s"] = statistics.median(
        rate(10, lifecycle, max_count=1000) for _ in range(args.repeats)
    )

    search_exp = client.create_experiment("bench-search-" + uuid.uuid4().hex[:8])
    for i in range(200):
        rid = client.create_run(search_exp).info.run_id
        client.log_batch(
            rid,
            metrics=[Metric("acc", (i % 100) / 100, now_ms(), 0)],
            params=[Param("kind", "a" if i % 2 else "b")],
            tags=[RunTag("group", f"g{i % 10}")],
        )
    filt = "metrics.acc > 0.5 AND params.kind = 'a'"

    out["search_runs_ms"], out["http_search_runs_ms"] = search_both(
        client, session, args.url, search_exp, filt, 50, 20 * args.repeats
    )

    hist_run = client.create_run(exp).info.run_id
    ts = now_ms()
    client.log_batch(hist_run, metrics=[Metric("h", float(i), ts, i) for i in range(300)])

    def history():
        assert len(client.get_metric_history(hist_run, "h")) == 300

    history()
    out["metric_history_ms"] = statistics.median(latencies(20 * args.repeats, history))

    def raw_history():
        resp = session.get(
            args.url + "/api/2.0/mlflow/metrics/get-history",
            params={"run_id": hist_run, "metric_key": "h"},
        )
        resp.raise_for_status()
        assert len(resp.json()["metrics"]) == 300

    out["http_metric_history_ms"] = statistics.median(latencies(20 * args.repeats, raw_history))

    search_body = {
        "experiment_ids": [search_exp], "filter": filt, "order_by": ["metrics.acc DESC"], "max_results": 50,
    }
    answers = {
        "search": session.post(args.url + "/api/2.0/mlflow/runs/search", json=search_body).text,
        "history": session.get(
            args.url + "/api/2.0/mlflow/metrics/get-history", params={"run_id": hist_run, "metric_key": "h"}
        ).text,
        "batch": "{}",
    }
    ts = now_ms()
    batch_metrics = [Metric(f"c{j % 10}", float(j), ts, j // 10) for j in range(1000)]
    alone = client_only(
        client,
        answers,
        20 * args.repeats,
        {
            "search": lambda: client.search_runs([search_exp], filt, order_by=["metrics.acc DESC"], max_results=50),
            "history": lambda: client.get_metric_history(hist_run, "h"),
            "batch": lambda: client.log_batch(batch_run, metrics=batch_metrics),
        },
    )
    out["client_search_runs_ms"] = alone["search"]
    out["client_metric_history_ms"] = alone["history"]
    out["client_log_batch_metrics_per_s"] = 1000 * 1000 / alone["batch"]
    out["ids"] = {"search_experiment": search_exp, "history_run": hist_run, "batch_run": batch_run}

    if args.scale:
        scale_exp = client.create_experiment("bench-scale-" + uuid.uuid4().hex[:8])
        start = time.perf_counter()
        for i in range(args.scale):
            rid = client.create_run(scale_exp).info.run_id
            client.log_batch(
                rid,
                metrics=[Metric("acc", (i % 100) / 100, now_ms(), 0)],
                params=[Param("group", f"g{i % 20}")],
            )
        out["scale_runs"] = args.scale
        out["scale_load_s"] = time.perf_counter() - start
        scale_filter = "params.group = 'g7' AND metrics.acc > 0.5"

        # g7 holds i % 100 in {7, 27, 47, 67, 87}; two of those five have acc > 0.5.
        out["scale_search_ms"], out["http_scale_search_ms"] = search_both(
            client, session, args.url, scale_exp, scale_filter, args.scale // 50, 10 * args.repeats
        )
    return out


if __name__ == "__main__":
    main()
