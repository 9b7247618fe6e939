-- reap_leases: the leader's recovery of lapsed leases (worker/dispatch/reaping.py, Reaper.recover_lapsed).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: cu:sched:leader, the leader's lock.
-- KEYS[3...]: per lease of ARGV, in its order, three keys: its job's hash (cu:{job:<id>}), the input
-- chunk its item lies in (cu:{job:<id>}:in:<n>), and the item's first identifier lock
-- (cu:lock:<digest>), or the input chunk again when the item has no lock.
-- ARGV[1]: the lease in seconds.
-- ARGV[2]: the most lapses an item may have before it is given up.
-- ARGV[3]: the caller's leader token: nothing is done unless it holds the leader's lock.
-- ARGV[4...]: per lease: the member 'job:index:token' the caller found lapsed, its item's index, and a
-- fresh token for it.
-- Reply: a list of {'again', member} for an item handed out again under a new lease,
-- {'end', member, state, lapses} for one to record now (its job was cancelled, or it lapsed too
-- often), {'gone', member} for one whose job has ended or expired. A lease renewed since the caller
-- looked (its worker was only late) is left alone and not in the reply.
--
-- Only a lease that lapsed while its item ran counts towards giving the item up ('l:i'); one whose
-- message waited, or was lost on the way, is handed out again for free: waiting is never the item's
-- fault. An item has started when it took its identifier locks, as it starts: its first lock holds this
-- very delivery (the locks outlive the lease by a lease, so they still do). An item without locks
-- is taken as started: its lapses count, as they always did.
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
local k = 3
for a = 4, #ARGV, 3 do
  local member, index, token = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local jk, ck, lock = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) <= now then
    local state = redis.call('HGET', jk, 'state')
    if not state or state == 'COMPLETED' then
      redis.call('ZREM', KEYS[1], member)
      out[#out + 1] = {'gone', member}
    else
      local lapses = 0
      if lock == ck or redis.call('GET', lock) == member then
        lapses = redis.call('HINCRBY', ck, 'l:' .. index, 1)
      else
        lapses = tonumber(redis.call('HGET', ck, 'l:' .. index) or '0')
      end
      if state == 'CANCELLED' or lapses > tonumber(ARGV[2]) then
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
        out[#out + 1] = {'end', member, state, tostring(lapses)}
      else
        redis.call('ZREM', KEYS[1], member)
        local again = string.match(member, '^(.*:)[^:]*$') .. token
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), again)
        out[#out + 1] = {'again', again}
      end
    end
  end
end
return out
