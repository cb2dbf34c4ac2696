-- wrk script for the response cache benchmark: POST one prebuilt binary-tensor body, unchanged
-- (a repeat: a hit once cached) for HIT_PERCENT of the requests, and for the others with the
-- low mantissa bytes of the last three input floats set from a counter and a run seed (a call
-- never seen before: a miss). Prints the same machine-readable line as requests.lua.
--
--   wrk -t1 -c64 -d8s --latency -s benchmarks/cache_requests.lua URL -- BODY_FILE CONTENT_TYPE HEADER_LENGTH AUTHORIZATION HIT_PERCENT SEED

local body, hit_percent, seed, counter = nil, 0, 0, 0
local prefix, n = nil, 0

function init(args)
   local file = assert(io.open(args[1], "rb"))
   body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = args[2]
   if args[3] ~= nil and args[3] ~= "" then
      wrk.headers["Inference-Header-Content-Length"] = args[3]
   end
   if args[4] ~= nil and args[4] ~= "" then
      wrk.headers["Authorization"] = args[4]
   end
   hit_percent = tonumber(args[5])
   seed = tonumber(args[6]) % 65536
   n = #body
   prefix = body:sub(1, n - 12)
end

local function float(low, high, rest)
   -- One little-endian float32: its two lowest (mantissa) bytes replaced, sign and exponent
   -- kept, so the value stays finite and close to the original.
   return string.char(low, high) .. rest
end

function request()
   counter = counter + 1
   if counter % 100 < hit_percent then
      return wrk.format(nil, nil, nil, body)
   end
   local c = counter
   local tail = float(c % 256, math.floor(c / 256) % 256, body:sub(n - 9, n - 8))
      .. float(math.floor(c / 65536) % 256, math.floor(c / 16777216) % 256, body:sub(n - 5, n - 4))
      .. float(seed % 256, math.floor(seed / 256) % 256, body:sub(n - 1, n))
   return wrk.format(nil, nil, nil, prefix .. tail)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
