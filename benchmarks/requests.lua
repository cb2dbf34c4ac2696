-- wrk script: POST one prebuilt body (JSON or binary) with its headers, and print exact
-- latency percentiles and error counts as one machine-readable line.
--
--   wrk -t1 -c8 -d8s --latency -s benchmarks/requests.lua URL -- BODY_FILE CONTENT_TYPE [HEADER_LENGTH [AUTHORIZATION]]

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = args[2]
   if args[3] ~= nil and args[3] ~= "" then
      wrk.headers["Inference-Header-Content-Length"] = args[3]
   end
   if args[4] ~= nil and args[4] ~= "" then
      wrk.headers["Authorization"] = args[4]
   end
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
