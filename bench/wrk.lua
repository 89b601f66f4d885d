-- wrk script for scripts/bench.py. Configured by the environment, because wrk decides whether to call
-- request() per request from the script's top level, before any init(args) runs:
--   WRK_AUTHORIZATION="Bearer x"   one fixed header, request built once (cheapest for wrk itself)
--   WRK_HANDLES=/path              one handle per line, a different one on each request (RSS probe)
-- done() prints one line "WRK_JSON {...}" with the figures scripts/bench.py reads.

local handles_path = os.getenv("WRK_HANDLES")

if handles_path then
  local headers = {}
  for line in io.lines(handles_path) do
    headers[#headers + 1] = { Authorization = "Bearer " .. line }
  end
  local next_one = 0
  function request()
    next_one = next_one % #headers + 1
    return wrk.format(nil, nil, headers[next_one])
  end
else
  wrk.headers["Authorization"] = os.getenv("WRK_AUTHORIZATION")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
