-- wrk script: POST /api/transactional/send with a fresh random recipient per request, so the
-- contact upserts never contend on one row.
--
-- Environment:
--   API_KEY                  bearer key (required)
--   TEMPLATE_KEY             template key (default "load")
--   RUN_TAG                  distinguishes runs in recipient addresses (default: time)
--   MAX_REQUESTS_PER_THREAD  stop a thread after this many responses (0 = run for -d)
--
-- At the end prints one machine-readable line:
--   LT_RESULT requests=.. duration_s=.. rps=.. p50_ms=.. p90_ms=.. p95_ms=.. p99_ms=.. max_ms=..
--             status_202=.. status_other=.. socket_errors=.. timeouts=..
-- plus "LT_STATUS <code> <count>" for every status seen.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  responses = 0
  counter = 0
  limit = tonumber(os.getenv("MAX_REQUESTS_PER_THREAD") or "0") or 0
  run = os.getenv("RUN_TAG") or tostring(os.time())
  template = os.getenv("TEMPLATE_KEY") or "load"
  math.randomseed(os.time() * 7919 + tid)
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("API_KEY") or "missing")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"email":"lt-%s-%d-%d-%d@load.example.com","template_key":"%s","context":{"n":%d}}',
    run, tid, counter, math.random(1, 999999), template, counter)
  return wrk.format("POST", "/api/transactional/send", nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  responses = responses + 1
  if limit > 0 and responses >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s or {}) do
      agg[code] = (agg[code] or 0) + n
    end
  end
  local ok, other = 0, 0
  for code, n in pairs(agg) do
    io.write(string.format("LT_STATUS %d %d\n", code, n))
    if code == 202 then ok = ok + n else other = other + n end
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local ms = function(p) return latency:percentile(p) / 1000 end
  io.write(string.format(
    "LT_RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.2f p90_ms=%.2f p95_ms=%.2f p99_ms=%.2f max_ms=%.2f " ..
    "status_202=%d status_other=%d socket_errors=%d timeouts=%d\n",
    summary.requests, secs, summary.requests / secs, ms(50), ms(90), ms(95), ms(99), latency.max / 1000,
    ok, other, e.connect + e.read + e.write, e.timeout))
end
