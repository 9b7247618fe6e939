-- end_job: set a job's final state once, count it, schedule its callback (in the same step, so no
-- crash between the two can lose it) and start the TTL of its keys (worker/store/jobstore.py, JobStore.end).
--
-- KEYS[1]: the job hash (cu:{job:<id>}).
-- KEYS[2]: cu:sched:jobs.
-- KEYS[3]: cu:sched:due.
-- KEYS[4]: cu:metrics.
-- KEYS[5]: cu:callbacks.
-- KEYS[6]: the tenant's job index (cu:tenant:<t>:jobs).
-- KEYS[7]: the tenant's active jobs (cu:tenant:<t>:active).
-- KEYS[8]: the job's Idempotency-Key claim (cu:idem:...), named in the job hash (field
-- idempotencyKey), or the job hash again when it has none.
-- KEYS[9...]: every key of the job, to expire (worker/store/keys.py, job_keys).
-- ARGV[1]: now, ISO 8601.
-- ARGV[2]: the job's ttl in seconds.
-- ARGV[3]: the job id.
-- ARGV[4]: the metrics field of a job COMPLETED.
-- ARGV[5]: the metrics field of a job CANCELLED.
-- Reply: 1 the first time only; 0 the job had ended already; -1 the job does not exist; -2 some
-- of its items have no outcome yet.

-- The items of a job that have an outcome, from its outcome counters. Also in cancel_job.lua: Redis
-- scripts cannot share code. The counters are worker/store/jobstore.py's OUTCOME_COUNTERS
-- (tests/unit/worker/test_lua.py holds the two to the same list).
local function processed(job)
  local n = 0
  for _, v in ipairs(redis.call('HMGET', job, 'n.created', 'n.updated', 'n.createdWithErrors',
                                'n.updatedWithErrors', 'n.failed', 'n.cancelled', 'n.wouldCreate',
                                'n.wouldUpdate')) do
    n = n + (tonumber(v) or 0)
  end
  return n
end

if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'finishedAt') then return 0 end
if processed(KEYS[1]) < tonumber(redis.call('HGET', KEYS[1], 'totalCount')) then return -2 end
if redis.call('HGET', KEYS[1], 'state') == 'CANCELLED' then
  redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
else
  redis.call('HSET', KEYS[1], 'state', 'COMPLETED')
  redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
end
redis.call('HSETNX', KEYS[1], 'startedAt', ARGV[1])
redis.call('HSET', KEYS[1], 'finishedAt', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
if redis.call('HGET', KEYS[1], 'callbackUrl') then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'cb.first', t[1])
  redis.call('ZADD', KEYS[5], t[1], ARGV[3])
end
if KEYS[8] ~= KEYS[1] then redis.call('EXPIRE', KEYS[8], ARGV[2]) end
-- The tenant's index lives as long as its newest finished job could be listed.
redis.call('EXPIRE', KEYS[6], 2 * tonumber(ARGV[2]))
redis.call('ZREM', KEYS[7], ARGV[3])
for i = 9, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
