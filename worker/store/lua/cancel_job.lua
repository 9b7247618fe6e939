-- cancel_job: cancel an unfinished job (worker/store/jobstore.py, JobStore.cancel).
--
-- KEYS[1]: the job hash (cu:{job:<id>}).
-- KEYS[2]: cu:inflight, the leases.
-- KEYS[3]: the job's delayed items (cu:{job:<id>}:delayed).
-- KEYS[4]: the job's ready list (cu:{job:<id>}:ready).
-- KEYS[5]: cu:sched:jobs.
-- KEYS[6]: cu:sched:due.
-- KEYS[7]: cu:metrics.
-- KEYS[8...]: the job's input chunks (cu:{job:<id>}:in:<n>), each marked cancelled.
-- ARGV[1]: the job id.
-- ARGV[2]: the metrics field of the job's cancelled items.
-- Reply: {state before (false when the job does not exist), 1 if nothing of it is left running else 0}.
--
-- Items not in flight are counted CANCELLED here, at once (in the job and in the fleet's
-- metrics, so the two never disagree); items queued or running end on their own (a queued one
-- sees the 'cancelled' mark on its chunk and records CANCELLED). The job stays among the
-- scheduler's jobs, which dispatches nothing more of it and ends it once its last running item
-- has ended.

-- The items of a job that have an outcome, from its outcome counters. Also in end_job.lua: Redis
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

local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {false, 0} end
if state ~= 'QUEUED' and state ~= 'RUNNING' then return {state, 0} end
redis.call('HSET', KEYS[1], 'state', 'CANCELLED')
for i = 8, #KEYS do redis.call('HSET', KEYS[i], 'cancelled', '1') end
-- Lease members are 'job:index:token': this job's start with its id.
local prefix = ARGV[1] .. ':'
local running = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then running = running + 1 end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'totalCount'))
local cancelled = total - processed(KEYS[1]) - running
if cancelled > 0 then
  redis.call('HINCRBY', KEYS[1], 'n.cancelled', cancelled)
  redis.call('HINCRBY', KEYS[7], ARGV[2], cancelled)
end
redis.call('HSET', KEYS[1], 'cursor', total)
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[6], ARGV[1])
if running == 0 then return {state, 1} end
return {state, 0}
