-- record_outcome: record an item's outcome once, end its lease, release its identifier locks and
-- hand on its chain, in one step (worker/store/jobstore.py, JobStore.record_outcome).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: the job hash (cu:{job:<id>}).
-- KEYS[3]: the item's result chunk (cu:{job:<id>}:res:<n>).
-- KEYS[4]: the job's failed items (cu:{job:<id>}:failed).
-- KEYS[5]: the job's ready list (cu:{job:<id>}:ready).
-- KEYS[6]: cu:sched:due.
-- KEYS[7...]: the item's identifier locks, to delete.
-- ARGV[1]: the member 'job:index:token' of the delivery's lease.
-- ARGV[2]: the item's index.
-- ARGV[3]: the item's result, JSON.
-- ARGV[4]: '1' when the item failed, else '0'.
-- ARGV[5]: the outcome counter to bump in the job hash (n.created, ...).
-- ARGV[6]: the index of the item's chain successor, or ''.
-- ARGV[7]: the job id.
-- Reply: -1 the lease is gone; 0 another delivery recorded the item; 1 recorded now.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return -1 end
if #KEYS > 6 then redis.call('DEL', unpack(KEYS, 7, #KEYS)) end
if redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3]) == 0 then return 0 end
if ARGV[4] == '1' then redis.call('ZADD', KEYS[4], ARGV[2], ARGV[2]) end
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
-- A cancelled job's chain ends here: the cancel counted the waiting successors CANCELLED already.
if ARGV[6] ~= '' and redis.call('HGET', KEYS[2], 'state') ~= 'CANCELLED' then
  redis.call('RPUSH', KEYS[5], ARGV[6])
  redis.call('ZADD', KEYS[6], redis.call('TIME')[1], ARGV[7])
end
return 1
