-- take_locks: take every identifier lock of an item for one delivery, all or none
-- (worker/items/locks.py, IdentifierLocks.acquire: for items stored without their locks' digests).
--
-- KEYS: the lock keys (cu:lock:<digest>...).
-- ARGV[1]: the owner, the delivery 'job:index:token'.
-- ARGV[2]: the item's prefix 'job:index:': a lock held by an earlier delivery of the same item is taken over.
-- ARGV[3]: the locks' ttl in ms.
-- Reply: 1 when every lock was taken, 0 when another item holds one (none is then held).

-- take_all is also in claim_item.lua, which takes the locks of an item stored with their digests:
-- Redis scripts cannot share code, so the two copies are kept identical (tests/unit/worker/test_lua.py).
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

return take_all(KEYS, ARGV[1], ARGV[2], ARGV[3])
