-- defer_item: hand an item back to the scheduler to run again after a delay, on Redis's clock
-- (worker/store/jobstore.py, JobStore.defer).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: the item's input chunk (cu:{job:<id>}:in:<n>).
-- KEYS[3]: the job's delayed items (cu:{job:<id>}:delayed).
-- KEYS[4]: cu:sched:due.
-- KEYS[5...]: the item's identifier locks.
-- ARGV[1]: the member 'job:index:token' of the delivery's lease.
-- ARGV[2]: the item's index.
-- ARGV[3]: the delay in seconds.
-- ARGV[4]: the item's memo, JSON.
-- ARGV[5]: '1' to keep the locks (their ttl set to ARGV[6]), '0' to release them.
-- ARGV[6]: the locks' ttl in ms when kept.
-- ARGV[7]: the job id.
-- Reply: -1 the lease is gone; 0 the job was cancelled (the caller records the item instead); 1 deferred.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
if redis.call('HGET', KEYS[2], 'cancelled') then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if #KEYS > 4 then
  if ARGV[5] == '1' then
    for i = 5, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
  else
    redis.call('DEL', unpack(KEYS, 5, #KEYS))
  end
end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3])
redis.call('HSET', KEYS[2], 'm:' .. ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], due, ARGV[2])
redis.call('ZADD', KEYS[4], 'LT', due, ARGV[7])
return 1
