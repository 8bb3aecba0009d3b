-- wrk script for bench/tracking.sh: every request POSTs one log-metric to the run in $RUN_ID,
-- each with its own step, and the summary counts every answer that is not 200.
local run_id = os.getenv("RUN_ID")
local counter = 0
local threads = 0

-- Each thread gets its own key, so no two requests log the same point.
setup = function(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local body = string.format(
    '{"run_id":"%s","key":"load%d","value":%d,"timestamp":1700000000000,"step":%d}',
    run_id, thread_id or 0, counter, counter)
  return wrk.format(nil, "/api/2.0/mlflow/runs/log-metric", nil, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d non200=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
