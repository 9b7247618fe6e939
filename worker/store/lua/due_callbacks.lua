-- due_callbacks: the jobs whose callback is due, each held ahead while it is tried
-- (worker/dispatch/scheduler.py, Dispatcher.queue_due_callbacks).
--
-- KEYS[1]: cu:callbacks.
-- KEYS[2]: cu:sched:leader, the leader's lock.
-- ARGV[1]: how long to hold a due callback ahead, in seconds.
-- ARGV[2]: the most jobs to answer.
-- ARGV[3]: the caller's leader token: nothing is answered unless it holds the leader's lock.
-- Reply: the ids of the jobs whose callback is due.
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), job) end
return due
