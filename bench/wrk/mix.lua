-- A mix of requests (many hosts and paths), one per line of the file named after `--`.
-- Each line is a whole request with its CRLFs written as the two characters "\r\n";
-- requests are pre-built in init() and handed out round robin, so request() is a lookup.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local requests, count, next_index = {}, 0, 0

function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then
         requests[#requests + 1] = line:gsub("\\r\\n", "\r\n")
      end
   end
   count = #requests
   assert(count > 0, "no requests in " .. args[1])
end

function request()
   next_index = next_index + 1
   if next_index > count then
      next_index = 1
   end
   return requests[next_index]
end
