-- renew_leases: a worker's heartbeat, and the renewal of the leases and identifier locks of the items
-- it runs (worker/dispatch/leases.py, LeaseKeeper.renew_once).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: cu:fleet, the workers' heartbeats.
-- KEYS[3]: cu:fleet:slots, the workers' concurrency.
-- ARGV[1]: the worker's id.
-- ARGV[2]: its slots.
-- ARGV[3]: the lease in seconds.
-- ARGV[4]: the locks' ttl in ms.
-- ARGV[5...]: per item: its member 'job:index:token', its number of locks n, then its n lock keys.
-- Reply: the members whose lease is gone.
--
-- The lock keys come in ARGV, not KEYS, as a list per item; the worker holds them, so they could be
-- KEYS too, but the per-item grouping is what tells which locks belong to a lost lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local lost = {}
local i = 5
while i <= #ARGV do
  local member, nlocks = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), member)
    for j = i + 2, i + 1 + nlocks do redis.call('PEXPIRE', ARGV[j], ARGV[4]) end
  else
    lost[#lost + 1] = member
  end
  i = i + 2 + nlocks
end
return lost
