-- callback_later: try a job's callback again after a delay, on Redis's clock
-- (worker/store/jobstore.py, JobStore.callback_later).
--
-- KEYS[1]: cu:callbacks.
-- KEYS[2]: the job hash (cu:{job:<id>}).
-- ARGV[1]: the job id.
-- ARGV[2]: the attempts made so far.
-- ARGV[3]: the delay in seconds.
-- Reply: 1. The callback is moved only if it is still due (ZADD XX).
local t = redis.call('TIME')
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'cb.attempts', ARGV[2]) end
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3]), ARGV[1])
return 1
