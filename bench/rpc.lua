-- wrk script for the users-service RPC routes: every request gets its own body.
--
--   wrk -t THREADS -s bench/rpc.lua URL -- METHOD MODE FILE THREADS [PASSWORD]
--
-- METHOD  the RPC method (the request goes to /users/Users/METHOD)
-- MODE    pick:FIELD   each request sends {"FIELD":"<a random line of FILE>"}
--         login        {"username":"<a random line of FILE>","password":PASSWORD}
--         walk:FIELD   each thread walks its own slice of FILE in order, so no line is
--                      sent twice (Logout); a thread that runs out starts its slice
--                      again and counts a wrap
--         create       {"username":..,"email":..,"password":PASSWORD} with a username
--                      no other request uses; FILE is a prefix unique to this run
--
-- THREADS must repeat wrk's -t (walk splits FILE by it).
--
-- done() prints one line, `BENCH_JSON {...}`, with the figures bench/bench.py reads.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "wrk_common.lua")
local read_lines, quote = common.read_lines, common.quote
setup = common.setup

local path, kind, field, values, password, prefix
local first, last, cursor
local headers = { ["Content-Type"] = "application/json" }
local sequence = 0
wraps = 0

function init(args)
   path = "/users/Users/" .. args[1]
   local mode = args[2]
   kind, field = mode:match("^(%a+):?(.*)$")
   password = args[5]
   math.randomseed(os.time() * 1000 + (id or 0) * 7919)
   if kind == "create" then
      prefix = args[3] .. "-" .. (id or 0) .. "-"
      return
   end
   values = read_lines(args[3])
   if kind == "walk" then
      local n = tonumber(args[4])
      local per = math.floor(#values / n)
      first = (id or 0) * per + 1
      last = first + per - 1
      cursor = first
   end
end

function request()
   local body
   if kind == "pick" then
      body = '{' .. quote(field) .. ':' .. quote(values[math.random(#values)]) .. '}'
   elseif kind == "login" then
      body = '{"username":' .. quote(values[math.random(#values)]) ..
             ',"password":' .. quote(password) .. '}'
   elseif kind == "walk" then
      if cursor > last then
         cursor = first
         wraps = wraps + 1
      end
      body = '{' .. quote(field) .. ':' .. quote(values[cursor]) .. '}'
      cursor = cursor + 1
   elseif kind == "create" then
      sequence = sequence + 1
      local name = prefix .. sequence
      body = '{"username":' .. quote(name) .. ',"email":' .. quote(name .. "@example.com") ..
             ',"password":' .. quote(password) .. '}'
   end
   return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
   common.report(summary, latency, 0, common.total("wraps"))
end
