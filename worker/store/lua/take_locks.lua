-- take_locks: take every identifier lock of an item for one delivery, all or none
-- (worker/items/locks.py, IdentifierLocks.acquire: when a plain SET NX found one of them held).
--
-- KEYS: the lock keys (cu:lock:<digest>...).
-- ARGV[1]: the owner, the delivery 'job:index:token'.
-- ARGV[2]: the item's prefix 'job:index:': a lock held by an earlier delivery of the same item is taken over.
-- ARGV[3]: the locks' ttl in ms.
-- Reply: 1 when every lock was taken, 0 when another item holds one (none is then held by the owner,
-- not even one its caller's SET NX took just before).
local owner, item, ttl = ARGV[1], ARGV[2], ARGV[3]
for _, key in ipairs(KEYS) do
  if not redis.call('SET', key, owner, 'NX', 'PX', ttl) then
    local holder = redis.call('GET', key)
    if holder and string.sub(holder, 1, #item) ~= item then
      for _, mine in ipairs(KEYS) do
        if redis.call('GET', mine) == owner then redis.call('DEL', mine) end
      end
      return 0
    end
    redis.call('SET', key, owner, 'PX', ttl)
  end
end
return 1
