-- One fixed request, byte for byte the file named after `--` (written by bench.py).
-- No global request() is defined, so wrk builds the request once per thread and sends it
-- without running Lua per request: the load generator stays as cheap as possible.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local raw = file:read("*a")
   file:close()
   -- wrk.init() calls wrk.format() right after init(); hand it our exact bytes.
   wrk.format = function() return raw end
end
