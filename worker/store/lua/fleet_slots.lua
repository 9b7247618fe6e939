-- fleet_slots: forget silent workers and count the live workers' slots
-- (worker/dispatch/scheduler.py, Dispatcher.slow_round).
--
-- KEYS[1]: cu:fleet, the workers' heartbeats.
-- KEYS[2]: cu:fleet:slots, the workers' concurrency.
-- ARGV[1]: the seconds a heartbeat stays valid.
-- Reply: the live workers' slots, summed.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('HDEL', KEYS[2], unpack(dead))
end
local slots = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do slots = slots + tonumber(v) end
return slots
