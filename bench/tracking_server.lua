-- wrk script for bench/tracking.sh: the server's own time for one read or write, without a
-- Python client in front of it. MODE selects the request:
--   history  GET a 300-point metric history (RUN_ID, metric `h`)
--   search   POST the filtered, ordered search of bench/tracking_client.py (EXPERIMENT_ID)
--   batch    POST log-batch with 1000 new points per request (RUN_ID, keys w0..w9)
-- The summary line carries the request count, errors and latency percentiles.
local mode = os.getenv("MODE")
local run_id = os.getenv("RUN_ID") or ""
local experiment_id = os.getenv("EXPERIMENT_ID") or ""
local sent = 0

wrk.headers["Content-Type"] = "application/json"

request = function()
  if mode == "history" then
    return wrk.format("GET", "/api/2.0/mlflow/metrics/get-history?run_id=" .. run_id .. "&metric_key=h")
  elseif mode == "search" then
    local body = '{"experiment_ids":["' .. experiment_id .. '"],'
      .. '"filter":"metrics.acc > 0.5 AND params.kind = \'a\'",'
      .. '"order_by":["metrics.acc DESC"],"max_results":50}'
    return wrk.format("POST", "/api/2.0/mlflow/runs/search", nil, body)
  elseif mode == "batch" then
    sent = sent + 1
    local points = {}
    for j = 0, 999 do
      points[#points + 1] = string.format(
        '{"key":"w%d","value":%d.25,"timestamp":1700000000000,"step":%d}',
        j % 10, j, sent * 100 + math.floor(j / 10))
    end
    local body = '{"run_id":"' .. run_id .. '","metrics":[' .. table.concat(points, ",") .. "]}"
    return wrk.format("POST", "/api/2.0/mlflow/runs/log-batch", nil, body)
  end
  error("MODE must be history, search or batch, not " .. tostring(mode))
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK mode=%s requests=%d duration_us=%d non200=%d p50_us=%d p99_us=%d\n",
    mode, summary.requests, summary.duration,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
