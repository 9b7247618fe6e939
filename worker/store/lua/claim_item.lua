-- claim_item: read an item, check its delivery's lease and take its identifier locks, in one round trip
-- (worker/store/jobstore.py, JobStore.claim_item).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: the item's input chunk (cu:{job:<id>}:in:<n>).
-- ARGV[1]: the item's index.
-- ARGV[2]: the owner, the delivery 'job:index:token'.
-- ARGV[3]: the item's prefix 'job:index:'.
-- ARGV[4]: the locks' ttl in ms.
-- ARGV[5]: the lock key prefix (cu:lock:).
-- Reply: {input, meta, cancelled, memo, successor, lock digests, 1 when it took the locks else 0,
-- 0}; or {false x 6, 0, 1} when the delivery is stale (its lease is gone: the item was handed out
-- again) and must do nothing at all.
--
-- The lock keys are not in KEYS: they are built here from the digests stored in the chunk at
-- intake (ARGV[5] .. digest), which the caller cannot know before this script has read them.
-- The lease itself is kept alive by the worker's keeper from the moment the message was received.
-- A lock holding this delivery is also how the leader tells that the item started (reap_leases.lua).

-- take_all is also in take_locks.lua (worker/items/locks.py), the reference this script must agree
-- with: Redis scripts cannot share code, so the two copies are kept identical
-- (tests/unit/worker/test_lua.py). It takes every key of `locks` for `owner` or none, answering 1
-- or 0; a lock held by an earlier delivery of the same `item` ('job:index:') is taken over.
local function take_all(locks, owner, item, ttl)
  local taken = {}
  for _, key in ipairs(locks) do
    if not redis.call('SET', key, owner, 'NX', 'PX', ttl) then
      local holder = redis.call('GET', key)
      if holder and string.sub(holder, 1, #item) ~= item then
        if #taken > 0 then redis.call('DEL', unpack(taken)) end
        return 0
      end
      redis.call('SET', key, owner, 'PX', ttl)
    end
    taken[#taken + 1] = key
  end
  return 1
end

local i = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {false, false, false, false, false, false, 0, 1} end
local f = redis.call('HMGET', KEYS[2], i, 'meta', 'cancelled', 'm:' .. i, 'n:' .. i, 'k:' .. i)
local taken = 0
if f[2] and not f[3] and f[6] then
  local locks = {}
  for digest in string.gmatch(f[6], '%S+') do locks[#locks + 1] = ARGV[5] .. digest end
  taken = take_all(locks, ARGV[2], ARGV[3], ARGV[4])
end
f[7] = taken
f[8] = 0
return f
