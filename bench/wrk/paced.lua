-- single.lua's fixed request, with a pause of `args[2]` milliseconds after each answer on a
-- connection, so the load stays below what the proxy can take: latency is then the proxy's
-- own, not time spent queueing behind a saturated CPU.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local pause = 0

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local raw = file:read("*a")
   file:close()
   pause = tonumber(args[2] or "0")
   wrk.format = function() return raw end
end

function delay()
   return pause
end
