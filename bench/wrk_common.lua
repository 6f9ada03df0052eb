-- What bench/rpc.lua and bench/peer.lua share: the threads (for done() to read their
-- counters), reading a file of lines, and the `BENCH_JSON {...}` line bench/bench.py
-- reads. Loaded by each script with dofile, from the script's own directory.

local M = { threads = {} }
local counter = 0

-- wrk's setup hook: numbers each thread (its global `id`) and keeps it.
function M.setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(M.threads, thread)
end

-- The non-empty lines of the file at `path` (at least one).
function M.read_lines(path)
   local lines = {}
   local file = assert(io.open(path, "r"))
   for line in file:lines() do
      if #line > 0 then lines[#lines + 1] = line end
   end
   file:close()
   assert(#lines > 0, "no lines in " .. path)
   return lines
end

function M.quote(s)
   return '"' .. s .. '"'
end

-- The sum over the threads of their global `name` (0 where unset).
function M.total(name)
   local sum = 0
   for _, thread in ipairs(M.threads) do
      sum = sum + (thread:get(name) or 0)
   end
   return sum
end

-- Writes the run's figures: wrk's, plus `bad` answers with a wrong body (counted as
-- the error "body") and `wraps` of walked files.
function M.report(summary, latency, bad, wraps)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"body":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},"wraps":%d}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, bad,
      latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, wraps))
end

return M
