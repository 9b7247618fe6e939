-- reap_leases: the leader's recovery of lapsed leases (worker/dispatch/scheduler.py, Dispatcher.recover_lapsed).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: cu:sched:leader, the leader's lock.
-- ARGV[1]: the lease in seconds.
-- ARGV[2]: the most lapses an item may have before it is given up.
-- ARGV[3]: the caller's leader token: nothing is done unless it holds the leader's lock.
-- ARGV[4]: the format of a job's key, 'cu:{job:%s}' (worker/store/keys.py, JOB_KEY_FORMAT).
-- ARGV[5]: the items per input chunk (worker/store/keys.py, CHUNK).
-- ARGV[6]: the lock key prefix (cu:lock:).
-- ARGV[7]: the items per packed input block (worker/store/packing.py, BLOCK).
-- ARGV[8...]: fresh tokens; at most this many lapsed leases are looked at.
-- Reply: a list of {'again', member} for an item handed out again under a new lease,
-- {'end', member, state, lapses} for one to record now (its job was cancelled, or it lapsed too
-- often), {'gone', member} for one whose job has ended or expired.
--
-- Spans jobs by nature: the lapsed leases, of any job, are found here, so the keys of their jobs (the
-- hash string.format(ARGV[4], id), its input chunk that .. ':in:' .. n) and of their first identifier
-- lock are built here too, not passed in KEYS: the lock's digest is the item's line of its block's
-- 'f:<block>' field (or the first of its own 'k:<index>' field, in jobs stored by an earlier version).
-- Only a lease that lapsed while its item ran counts towards giving the item up ('l:i'); one whose
-- message waited, or was lost on the way, is handed out again for free: waiting is never the item's
-- fault. An item has started when it took its identifier locks, as it starts: its first lock holds this
-- very delivery (the locks outlive the lease by a lease, so they still do). An item without locks
-- is taken as started: its lapses count, as they always did.
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return {} end
local job_key, chunk, lock_prefix, block = ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
-- The first lock digest of item `index` of chunk `ck`, or nil when it has no lock.
local function first_digest(ck, index)
  local own = redis.call('HGET', ck, 'k:' .. index)
  if own then return string.match(own, '%S+') end
  local b = math.floor(tonumber(index) / block)
  local lines = redis.call('HGET', ck, 'f:' .. b)
  if not lines then return nil end
  local n = tonumber(index) - b * block
  for line in string.gmatch(lines, '[^\n]+') do
    if n == 0 then
      if line == '-' then return nil end
      return line
    end
    n = n - 1
  end
  return nil
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, #ARGV - 7)
local out = {}
for n, member in ipairs(lapsed) do
  local job, index = string.match(member, '^([^:]+):(%d+):')
  local jk = string.format(job_key, job)
  local state = redis.call('HGET', jk, 'state')
  if not state or state == 'COMPLETED' then
    redis.call('ZREM', KEYS[1], member)
    out[#out + 1] = {'gone', member}
  else
    local ck = jk .. ':in:' .. math.floor(tonumber(index) / chunk)
    local lapses = 0
    local first = first_digest(ck, index)
    if not first or redis.call('GET', lock_prefix .. first) == member then
      lapses = redis.call('HINCRBY', ck, 'l:' .. index, 1)
    else
      lapses = tonumber(redis.call('HGET', ck, 'l:' .. index) or '0')
    end
    if state == 'CANCELLED' or lapses > tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
      out[#out + 1] = {'end', member, state, tostring(lapses)}
    else
      redis.call('ZREM', KEYS[1], member)
      local again = job .. ':' .. index .. ':' .. ARGV[n + 7]
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), again)
      out[#out + 1] = {'again', again}
    end
  end
end
return out
