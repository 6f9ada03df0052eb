-- wrk script for the peers of the benchmark (PocketBase and better-auth): their calls
-- that match users-service's Create, Login, ReadSession and Read.
--
--   wrk -t THREADS -s bench/peer.lua URL -- CALL FILE [PASSWORD]
--
-- CALL  pb-signup       POST /api/collections/users/records {"email","password","passwordConfirm"}
--       pb-signin       POST /api/collections/users/auth-with-password {"identity","password"}
--       pb-refresh      POST /api/collections/users/auth-refresh, Authorization: <token>
--       pb-read         GET /api/collections/users/records/<id>, Authorization: <its token>
--       ba-signup       POST /api/auth/sign-up/email {"email","password","name"}
--       ba-signin       POST /api/auth/sign-in/email {"email","password"}
--       ba-session      GET /api/auth/get-session, Cookie: better-auth.session_token=<value>
-- FILE  for the sign-ups, a prefix unique to the run (each request gets an e-mail address
--       no other request uses); otherwise a file whose lines are picked at random:
--       e-mail addresses (sign-in), tokens (pb-refresh), cookie values (ba-session), or
--       "<id> <token>" of one user (pb-read).
--
-- better-auth answers a session check with a bad cookie by 200 and the body `null`: for
-- ba-session every body is checked, and one that is not a JSON object counts as an error
-- ("body" in the errors). done() prints one line, `BENCH_JSON {...}`, in the format of
-- bench/rpc.lua's, which bench/bench.py reads.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "wrk_common.lua")
local read_lines, quote = common.read_lines, common.quote
setup = common.setup

local call, values, password, prefix
local sequence = 0
local json = { ["Content-Type"] = "application/json" }
bad_bodies = 0

local function check_object(status, headers, body)
   if status == 200 and (body == nil or body:sub(1, 1) ~= "{") then
      bad_bodies = bad_bodies + 1
   end
end

function init(args)
   call = args[1]
   password = args[3]
   math.randomseed(os.time() * 1000 + (id or 0) * 7919)
   if call:match("signup$") then
      prefix = args[2] .. "-" .. (id or 0) .. "-"
   else
      values = read_lines(args[2])
   end
   if call == "pb-read" then
      local pairs_ = {}
      for i, line in ipairs(values) do
         local uid, token = line:match("^(%S+)%s+(%S+)$")
         assert(uid, "pb-read wants '<id> <token>' lines")
         pairs_[i] = { uid, token }
      end
      values = pairs_
   end
   if call == "ba-session" then
      response = check_object
   end
end

local function pick()
   return values[math.random(#values)]
end

local function email()
   sequence = sequence + 1
   return prefix .. sequence .. "@example.com"
end

function request()
   if call == "pb-signup" then
      return wrk.format("POST", "/api/collections/users/records", json,
         '{"email":' .. quote(email()) .. ',"password":' .. quote(password) ..
         ',"passwordConfirm":' .. quote(password) .. '}')
   elseif call == "pb-signin" then
      return wrk.format("POST", "/api/collections/users/auth-with-password", json,
         '{"identity":' .. quote(pick()) .. ',"password":' .. quote(password) .. '}')
   elseif call == "pb-refresh" then
      return wrk.format("POST", "/api/collections/users/auth-refresh",
         { ["Authorization"] = pick() })
   elseif call == "pb-read" then
      local p = pick()
      return wrk.format("GET", "/api/collections/users/records/" .. p[1],
         { ["Authorization"] = p[2] })
   elseif call == "ba-signup" then
      local address = email()
      return wrk.format("POST", "/api/auth/sign-up/email", json,
         '{"email":' .. quote(address) .. ',"password":' .. quote(password) ..
         ',"name":' .. quote(address:match("^[^@]+")) .. '}')
   elseif call == "ba-signin" then
      return wrk.format("POST", "/api/auth/sign-in/email", json,
         '{"email":' .. quote(pick()) .. ',"password":' .. quote(password) .. '}')
   elseif call == "ba-session" then
      return wrk.format("GET", "/api/auth/get-session",
         { ["Cookie"] = "better-auth.session_token=" .. pick() })
   end
   error("unknown call " .. tostring(call))
end

function done(summary, latency, requests)
   common.report(summary, latency, common.total("bad_bodies"), 0)
end
