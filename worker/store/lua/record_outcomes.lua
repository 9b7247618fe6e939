-- record_outcomes: record the outcomes of a message's items, each once, end their leases, release their
-- identifier locks and hand on their chains, in one step (worker/store/claims.py, ItemClaims.record_outcomes).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: the job hash (cu:{job:<id>}).
-- KEYS[3]: the job's failed items (cu:{job:<id>}:failed).
-- KEYS[4]: the job's ready list (cu:{job:<id>}:ready).
-- KEYS[5]: cu:sched:due.
-- KEYS[6 .. 5+c]: the chunks the items name by position below: their result chunks
-- (cu:{job:<id>}:res:<n>) and the input chunks of their memos (cu:{job:<id>}:in:<n>).
-- KEYS[6+c ...]: the items' identifier locks, item after item, to delete.
-- ARGV[1]: the job id.
-- ARGV[2]: c, the number of chunk keys.
-- ARGV[3]: m, the number of items.
-- ARGV[4 ...]: per item, 9 values: the member 'job:index:token' of its delivery's lease; its index; its
-- result (worker/store/packing.py); '1' when it failed, else '0'; the outcome counter to bump in the job
-- hash (n.created, ...); the index of its chain successor, or ''; the position among the chunk keys of
-- its result chunk; that of the input chunk holding its memo, to remove, or 0; its number of locks.
-- Reply: per item, -1 its lease is gone (nothing of it is done); 0 another delivery recorded it (its
-- lease ended, its locks released); 1 recorded now.
--
-- One script for the message, not one per item: what an item costs Redis is counted in commands, and
-- the items of a message share the script's call, the lease check, the result chunk's read and write,
-- the counter's increment and the locks' release.
local c, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local function arg(n, k) return ARGV[3 + (n - 1) * 9 + k] end
local members = {}
for n = 1, m do members[n] = arg(n, 1) end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(members))
local held, locks, status, by_chunk = {}, {}, {}, {}
local lock_at = 6 + c
for n = 1, m do
  local nlocks = tonumber(arg(n, 9))
  if scores[n] then
    held[#held + 1] = members[n]
    for j = lock_at, lock_at + nlocks - 1 do locks[#locks + 1] = KEYS[j] end
    local at = tonumber(arg(n, 7))
    by_chunk[at] = by_chunk[at] or {}
    table.insert(by_chunk[at], n)
    status[n] = 1
  else
    status[n] = -1
  end
  lock_at = lock_at + nlocks
end
if #held > 0 then redis.call('ZREM', KEYS[1], unpack(held)) end
if #locks > 0 then redis.call('DEL', unpack(locks)) end
local counts, failed, successors, memos = {}, {}, {}, {}
for at, items in pairs(by_chunk) do
  local fields = {}
  for k, n in ipairs(items) do fields[k] = arg(n, 2) end
  local present = redis.call('HMGET', KEYS[5 + at], unpack(fields))
  local writes = {}
  for k, n in ipairs(items) do
    if present[k] then
      status[n] = 0
    else
      writes[#writes + 1] = arg(n, 2)
      writes[#writes + 1] = arg(n, 3)
      counts[arg(n, 5)] = (counts[arg(n, 5)] or 0) + 1
      if arg(n, 4) == '1' then
        failed[#failed + 1] = arg(n, 2)
        failed[#failed + 1] = arg(n, 2)
      end
      if arg(n, 6) ~= '' then successors[#successors + 1] = arg(n, 6) end
      local memo_at = tonumber(arg(n, 8))
      if memo_at > 0 then
        memos[memo_at] = memos[memo_at] or {}
        table.insert(memos[memo_at], 'm:' .. arg(n, 2))
      end
    end
  end
  if #writes > 0 then redis.call('HSET', KEYS[5 + at], unpack(writes)) end
end
if #failed > 0 then redis.call('ZADD', KEYS[3], unpack(failed)) end
for counter, n in pairs(counts) do redis.call('HINCRBY', KEYS[2], counter, n) end
for at, fields in pairs(memos) do redis.call('HDEL', KEYS[5 + at], unpack(fields)) end
-- A cancelled job's chains end here: the cancel counted the waiting successors CANCELLED already.
if #successors > 0 and redis.call('HGET', KEYS[2], 'state') ~= 'CANCELLED' then
  redis.call('RPUSH', KEYS[4], unpack(successors))
  redis.call('ZADD', KEYS[5], redis.call('TIME')[1], ARGV[1])
end
return status
