-- renew_leases: a worker's heartbeat, and the renewal of the leases and identifier locks of the items
-- it runs (worker/dispatch/leases.py, LeaseKeeper.renew_once).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: cu:fleet, the workers' heartbeats.
-- KEYS[3]: cu:fleet:slots, the workers' concurrency.
-- KEYS[4...]: the identifier locks of every item, item after item, in the order of ARGV.
-- ARGV[1]: the worker's id.
-- ARGV[2]: its slots.
-- ARGV[3]: the lease in seconds.
-- ARGV[4]: the locks' ttl in ms.
-- ARGV[5...]: per item: its member 'job:index:token', then n, its number of locks: its locks are
-- the next n of KEYS[4...].
-- Reply: the members whose lease is gone.
--
-- Spans jobs by nature: one call renews every item the worker runs, of any job.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local lost = {}
local k = 4
for i = 5, #ARGV, 2 do
  local member, nlocks = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), member)
    for j = k, k + nlocks - 1 do redis.call('PEXPIRE', KEYS[j], ARGV[4]) end
  else
    lost[#lost + 1] = member
  end
  k = k + nlocks
end
return lost
