#!/usr/bin/env bash
# The tracking server side by side with `mlflow server`, in one run.
#
#   bench/tracking.sh [REPEATS] [SCALE_RUNS]
#
# 1. The same mlflow-client workload (bench/tracking_client.py) against `mlflow server` (the
#    pinned mlflow from the venv, SQLite backend, its own temporary directory) and against
#    `capstan server` (release build, SQLite, its own temporary workspace); prints both and the
#    ratios.
# 2. Raw capacity of `capstan server`: wrk (Debian's `wrk`, installed when missing) POSTs
#    log-metric for 10 s over 32 connections (bench/tracking_wrk.lua); then counts the stored
#    points against the answered requests.
#    Also the client's own cost: the same client calls answered by recorded answers, no server.
#    And the servers' own time, without the Python client: wrk with one connection repeats the
#    history read, the filtered search and 1000-point log-batch calls against each server for 5 s
#    each (bench/tracking_server.lua), on the data the client workload left behind.
# 3. Scale: SCALE_RUNS runs (default 10,000) in one experiment, then search with a filter and an
#    order, through the client.
#
# The venv is $CAPSTAN_VENV (default /var/tmp/capstan-venv, made by scripts/python-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
scale="${2:-10000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/capstan-target}"
venv="${CAPSTAN_VENV:-/var/tmp/capstan-venv}"
python="$venv/bin/python"
[ -x "$python" ] || { echo "no venv at $venv; run scripts/python-env.sh" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq wrk >&2; else sudo apt-get install -y -qq wrk >&2; fi
fi
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/capstan"
out="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${CAPSTAN_BENCH_KEEP:-}" ] && echo "kept $out" >&2 || rm -rf "$out"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_healthy() { # URL PATH
  for _ in $(seq 1 1200); do # up to 2 minutes: mlflow starts slowly on a busy machine
    curl -fsS "$1$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2
  exit 1
}

# server_side URL CLIENT_JSON OUT: wrk's summary lines for the three requests against URL.
server_side() {
  local ids
  ids="$("$python" -c 'import json,sys; i=json.load(open(sys.argv[1]))["ids"]; print(i["search_experiment"], i["history_run"], i["batch_run"])' "$2")"
  read -r exp hist batch <<<"$ids"
  : >"$3"
  for mode in history search batch; do
    local run="$hist"
    [ "$mode" = batch ] && run="$batch"
    MODE="$mode" RUN_ID="$run" EXPERIMENT_ID="$exp" \
      wrk -t1 -c1 -d5s -s bench/tracking_server.lua "$1" | grep '^WRK ' >>"$3"
  done
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2

# mlflow server: SQLite backend and artifacts in its own directory, its default workers.
mport="$(free_port)"
mkdir -p "$out/mlflow"
(cd "$out/mlflow" && exec "$venv/bin/mlflow" server --host 127.0.0.1 --port "$mport" \
  --backend-store-uri "sqlite:///$out/mlflow/mlflow.db" \
  --artifacts-destination "$out/mlflow/artifacts" >"$out/mlflow.log" 2>&1) &
pids+=($!)
wait_healthy "http://127.0.0.1:$mport" /health
echo "mlflow $("$venv/bin/mlflow" --version | awk '{print $NF}') on :$mport" >&2
"$python" bench/tracking_client.py "http://127.0.0.1:$mport" --repeats "$repeats" >"$out/mlflow.json"
server_side "http://127.0.0.1:$mport" "$out/mlflow.json" "$out/mlflow-wrk.txt"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true

cport="$(free_port)"
"$bin" --home "$out/capstan" server --port "$cport" >"$out/capstan.log" 2>&1 &
pids+=($!)
curl_url="http://127.0.0.1:$cport"
wait_healthy "$curl_url" /health
echo "capstan $("$bin" --version | awk '{print $NF}') on :$cport" >&2
"$python" bench/tracking_client.py "$curl_url" --repeats "$repeats" --scale "$scale" >"$out/capstan.json"
server_side "$curl_url" "$out/capstan.json" "$out/capstan-wrk.txt"

# Raw capacity: wrk against log-metric of one run.
run_id="$(curl -fsS -X POST "$curl_url/api/2.0/mlflow/runs/create" -H 'Content-Type: application/json' \
  -d '{"experiment_id":"0"}' | "$python" -c 'import json,sys; print(json.load(sys.stdin)["run"]["info"]["run_id"])')"
RUN_ID="$run_id" wrk -t2 -c32 -d10s -s bench/tracking_wrk.lua "$curl_url" >"$out/wrk.txt"
# Every point of both wrk threads' keys, through all history pages.
"$python" - "$curl_url" "$run_id" >>"$out/wrk.txt" <<'EOF'
import json, sys, urllib.parse, urllib.request
url, run_id = sys.argv[1:]
stored = 0
for key in ("load0", "load1"):
    token = None
    while True:
        query = {"run_id": run_id, "metric_key": key, "max_results": 25000}
        if token:
            query["page_token"] = token
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/metrics/get-history?" + urllib.parse.urlencode(query)) as resp:
            page = json.load(resp)
        stored += len(page.get("metrics", []))
        token = page.get("next_page_token")
        if not token:
            break
print(f"stored={stored}")
EOF

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$python" - "$out/mlflow.json" "$out/capstan.json" "$out/wrk.txt" "$out/mlflow-wrk.txt" "$out/capstan-wrk.txt" <<'EOF'
import json, re, sys
m = json.load(open(sys.argv[1])); c = json.load(open(sys.argv[2])); w = open(sys.argv[3]).read()


def server_side(path):
    """mode -> wrk's figures for it."""
    out = {}
    for line in open(path):
        fields = dict(re.findall(r"(\w+)=(\w+)", line))
        out[fields["mode"]] = {k: int(v) for k, v in fields.items() if k != "mode"}
    return out


ms, cs = server_side(sys.argv[4]), server_side(sys.argv[5])
rows = [
    ("single log_metric calls (calls/s)", "log_metric_calls_per_s", True, ">= 10x"),
    ("log_batch, 1000 metrics/call (metrics/s)", "log_batch_metrics_per_s", True, ">= 30x"),
    ("create run + log param + terminate (runs/s)", "run_lifecycle_runs_per_s", True, ">= 20x"),
    ("search_runs filtered, 200 runs (ms)", "search_runs_ms", False, "<= 2 ms"),
    ("get_metric_history, 300 points (ms)", "metric_history_ms", False, "<= 2 ms"),
]
client_rows = [
    ("log-metric (calls/s)", "http_log_metric_calls_per_s", "log_metric_calls_per_s", True),
    ("log-batch, 1000 metrics (metrics/s)", "http_log_batch_metrics_per_s", "log_batch_metrics_per_s", True),
    ("search-runs, 200 runs (ms)", "http_search_runs_ms", "search_runs_ms", False),
    ("get-history, 300 points (ms)", "http_metric_history_ms", "metric_history_ms", False),
]
print(f"| {'workload':<48} | {'mlflow':>10} | {'capstan':>10} | {'ratio':>7} | target |")
print(f"|{'-'*50}|{'-'*12}|{'-'*12}|{'-'*9}|--------|")
for label, key, higher, target in rows:
    ratio = c[key] / m[key] if higher else m[key] / c[key]
    print(f"| {label:<48} | {m[key]:>10.1f} | {c[key]:>10.2f} | {ratio:>6.1f}x | {target} |")
print("\nthe mlflow client alone, each call answered by the recorded server answer (no server):")
for label, key, via in [
    ("log_batch, 1000 metrics (metrics/s)", "client_log_batch_metrics_per_s", "log_batch_metrics_per_s"),
    ("search_runs, 50 of 200 runs (ms)", "client_search_runs_ms", "search_runs_ms"),
    ("get_metric_history, 300 points (ms)", "client_metric_history_ms", "metric_history_ms"),
]:
    print(f"| {label:<40} | client alone {c[key]:>10.2f} | capstan via client {c[via]:>10.2f} |")
print("\nthe same requests from a bare requests.Session, without the mlflow client:")
print(f"| {'request':<30} | {'mlflow':>10} | {'capstan':>10} | {'ratio':>7} | {'capstan via client':>18} |")
print(f"|{'-'*32}|{'-'*12}|{'-'*12}|{'-'*9}|{'-'*20}|")
for label, key, via, higher in client_rows:
    ratio = c[key] / m[key] if higher else m[key] / c[key]
    print(f"| {label:<30} | {m[key]:>10.1f} | {c[key]:>10.2f} | {ratio:>6.1f}x | {c[via]:>18.2f} |")
print("\nthe servers' own time: wrk, one connection, 5 s per request kind (no Python client):")
print(f"| {'request':<36} | {'mlflow':>12} | {'capstan':>12} | {'ratio':>7} | target |")
print(f"|{'-'*38}|{'-'*14}|{'-'*14}|{'-'*9}|--------|")
for label, mode, target in [
    ("get-history, 300 points, p50 (ms)", "history", "<= 2 ms"),
    ("search-runs filtered, p50 (ms)", "search", "<= 2 ms"),
]:
    a, b = ms[mode]["p50_us"] / 1000, cs[mode]["p50_us"] / 1000
    print(f"| {label:<36} | {a:>12.2f} | {b:>12.2f} | {a / b:>6.1f}x | {target} |")
rate = lambda f: 1000 * f["requests"] / (f["duration_us"] / 1e6)
a, b = rate(ms["batch"]), rate(cs["batch"])
print(f"| {'log-batch, 1000 points (metrics/s)':<36} | {a:>12,.0f} | {b:>12,.0f} | {b / a:>6.1f}x | >= 30x |")
errors = sum(f["non200"] for f in list(ms.values()) + list(cs.values()))
print(f"({errors} errors over all of them)")
f = dict(re.findall(r"(\w+)=(\d+)", w.split("WRK", 1)[1]))
secs = int(f["duration_us"]) / 1e6
errors = sum(int(f[k]) for k in ("non200", "connect", "read", "write", "timeout"))
print(f"\nwrk log-metric: {int(f['requests']) / secs:,.0f} requests/s over {secs:.1f} s, "
      f"{errors} errors, p50 {int(f['p50_us']) / 1000:.2f} ms, p99 {int(f['p99_us']) / 1000:.2f} ms; "
      f"{f['stored']} points stored for {f['requests']} answered requests")
if "scale_runs" in c:
    print(f"scale: {c['scale_runs']:,} runs in one experiment (loaded in {c['scale_load_s']:.1f} s); "
          f"search_runs with a filter and an order: {c['scale_search_ms']:.2f} ms through the client, "
          f"{c['http_scale_search_ms']:.2f} ms as a bare request (target < 50 ms)")
print("\nraw JSON:\nmlflow " + json.dumps(m) + "\ncapstan " + json.dumps(c))
print("mlflow server side " + json.dumps(ms) + "\ncapstan server side " + json.dumps(cs))
EOF
