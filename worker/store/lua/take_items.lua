-- take_items: the leader's dispatch: take up to k items of each job (retries that are due, then chain
-- successors, then the next items of the input) and give each a lease (worker/dispatch/scheduler.py,
-- Dispatcher.tick).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: cu:sched:due.
-- KEYS[3]: cu:sched:leader, the leader's lock.
-- KEYS[4...]: per job of ARGV, in its order, four keys: its hash (cu:{job:<id>}), its retries
-- (...:delayed), its ready chain successors (...:ready) and its waiting chained items (...:waits).
-- ARGV[1]: the lease in seconds.
-- ARGV[2]: now, ISO 8601 (a job's startedAt).
-- ARGV[3]: the caller's leader token: nothing is handed out unless it holds the leader's lock.
-- ARGV[4...]: per job: its id, '1' when it is due (has retries or successors) else '0', k, then k
-- fresh tokens.
-- Reply: {members, {job, cursor, job, cursor, ...}}: the leases created ('job:index:token'), and
-- each job's dispatch cursor after the call.
--
-- Spans jobs by nature: it serves every job the leader allots slots to in one call. Each job's keys
-- share its hash tag; the scheduler's keys (KEYS[1..3]) are the fleet's own.
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return {{}, {}} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = now + tonumber(ARGV[1])
local members, cursors = {}, {}
-- Lua's unpack gives at most a few thousand values: a big fleet's tick takes more, so in slices.
local function call_sliced(command, key, values, step)
  for from = 1, #values, step do
    redis.call(command, key, unpack(values, from, math.min(from + step - 1, #values)))
  end
end
local i, j = 4, 4
while i <= #ARGV do
  local job, due, k = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
  local tokens = i + 3
  i = i + 3 + k
  local jk, dk, rk, wk = KEYS[j], KEYS[j + 1], KEYS[j + 2], KEYS[j + 3]
  j = j + 4
  local state, cursor, total, chained = unpack(redis.call('HMGET', jk, 'state', 'cursor', 'totalCount', 'chained'))
  if state == 'QUEUED' or state == 'RUNNING' then
    if state == 'QUEUED' then redis.call('HSET', jk, 'state', 'RUNNING', 'startedAt', ARGV[2]) end
    local picked = {}
    if due then
      local retries = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, k)
      if #retries > 0 then
        call_sliced('ZREM', dk, retries, 1000)
        for _, x in ipairs(retries) do picked[#picked + 1] = x end
      end
      if #picked < k then
        local got = redis.call('LPOP', rk, k - #picked)
        if got then for _, x in ipairs(got) do picked[#picked + 1] = x end end
      end
      if redis.call('LLEN', rk) > 0 then
        redis.call('ZADD', KEYS[2], now, job)
      else
        local nxt = redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')
        if #nxt > 0 then redis.call('ZADD', KEYS[2], nxt[2], job) else redis.call('ZREM', KEYS[2], job) end
      end
    end
    cursor, total, chained = tonumber(cursor), tonumber(total), tonumber(chained)
    if #picked < k and cursor < total then
      while #picked < k and cursor < total do
        if chained == 0 or redis.call('SISMEMBER', wk, cursor) == 0 then picked[#picked + 1] = tostring(cursor) end
        cursor = cursor + 1
      end
      redis.call('HSET', jk, 'cursor', cursor)
    end
    local zargs = {}
    for n, index in ipairs(picked) do
      local member = job .. ':' .. index .. ':' .. ARGV[tokens + n - 1]
      zargs[#zargs + 1] = expiry
      zargs[#zargs + 1] = member
      members[#members + 1] = member
    end
    call_sliced('ZADD', KEYS[1], zargs, 2000)
    cursors[#cursors + 1] = job
    cursors[#cursors + 1] = tostring(cursor)
  else
    -- Cancelled or ended: nothing of it is due any more, so the finisher may end it.
    redis.call('ZREM', KEYS[2], job)
    cursors[#cursors + 1] = job
    cursors[#cursors + 1] = tostring(total or 0)
  end
end
return {members, cursors}
