-- One request shape repeated by every wrk connection, with per-status counts and the ids of the
-- 2xx answers collected, and a JSON report written by done() (benchmarks/http_load.py reads it).
--
--   WRK_METHOD=POST WRK_BODY='doc_url=...' WRK_CONTENT_TYPE=application/x-www-form-urlencoded \
--   WRK_AUTHORIZATION='Bearer ...' WRK_ID_PATTERN='"uuid":%s*"([%w%-]+)"' WRK_OUT=/tmp/run.json \
--   wrk -t2 -c16 -d10s --timeout 10s -s benchmarks/wrk/request.lua http://127.0.0.1:8000/noop/annotate
--
-- Every variable is optional except WRK_OUT. The ids go to WRK_OUT .. ".ids", one per line.

wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body and body ~= "" then wrk.body = body end
local content_type = os.getenv("WRK_CONTENT_TYPE")
if content_type and content_type ~= "" then wrk.headers["Content-Type"] = content_type end
local authorization = os.getenv("WRK_AUTHORIZATION")
if authorization and authorization ~= "" then wrk.headers["Authorization"] = authorization end
local id_pattern = os.getenv("WRK_ID_PATTERN")
if id_pattern == "" then id_pattern = nil end

-- main state: the threads, to collect their counters in done()
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

-- thread state
statuses = {}
ids = {}
function response(status, headers, resp_body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if id_pattern and status >= 200 and status < 300 then
    local id = resp_body:match(id_pattern)
    if id then ids[#ids + 1] = id end
  end
end

local function json_number(x)
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  return string.format("%.3f", x)
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  local idf = assert(io.open(os.getenv("WRK_OUT") .. ".ids", "w"))
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
    for _, id in ipairs(thread:get("ids")) do idf:write(id, "\n") end
  end
  idf:close()
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', status, n) end
  local e = summary.errors
  out:write("{", string.format('"requests": %d, "duration_us": %d, "bytes": %d, ', summary.requests,
                               summary.duration, summary.bytes),
            string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ',
                          e.connect, e.read, e.write, e.status, e.timeout),
            '"statuses": {', table.concat(parts, ", "), "}, ",
            '"latency_us": {',
            '"min": ', json_number(latency.min), ', "mean": ', json_number(latency.mean),
            ', "stdev": ', json_number(latency.stdev), ', "max": ', json_number(latency.max),
            ', "p50": ', json_number(latency:percentile(50)), ', "p90": ', json_number(latency:percentile(90)),
            ', "p99": ', json_number(latency:percentile(99)), ', "p999": ', json_number(latency:percentile(99.9)),
            "}}\n")
  out:close()
end
