-- claim_items: a message's items, read as their delivery starts, and their leases checked and
-- extended in the same step (worker/store/claims.py, ItemClaims.claim_items).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2...]: the input chunks the items lie in (cu:{job:<id>}:in:<n>), one per chunk.
-- ARGV[1]: the lease in seconds.
-- ARGV[2]: m, the number of items.
-- ARGV[3 .. 2+m]: the items' leases, 'job:index:token'.
-- ARGV[3+m ...]: per chunk of KEYS[2...]: n, then the n fields to read of it.
-- Reply: {standing, {values of chunk 1}, {values of chunk 2}, ...}: standing holds 1 for an item whose
-- lease stands (now extended by a whole lease) and 0 for one whose lease is gone or has run out.
--
-- A lease that has run out is not taken back here even when the reaper has not got to it yet: the
-- reaper may hand the item out at any moment, and two deliveries would then run it. One that stands
-- is extended (never shortened), so a message that waited in the broker for most of a lease does not lapse between
-- its start and the worker's next renewal while another delivery runs its items.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = now + tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 3, 2 + m))
local standing, renew = {}, {}
for i = 1, m do
  if scores[i] and tonumber(scores[i]) > now then
    standing[i] = 1
    renew[#renew + 1] = expiry
    renew[#renew + 1] = ARGV[2 + i]
  else
    standing[i] = 0
  end
end
if #renew > 0 then redis.call('ZADD', KEYS[1], 'XX', 'GT', unpack(renew)) end
local out = {standing}
local a = 3 + m
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  out[#out + 1] = redis.call('HMGET', KEYS[k], unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
