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
-- the next n of KEYS[4...] (the worker passes only the locks that need it: those taken or extended
-- more than half a lease ago).
-- Reply: the members whose lease is gone.
--
-- Spans jobs by nature: one call renews every item the worker runs, of any job. The leases are
-- looked up and extended a thousand at a time (ZMSCORE, ZADD XX), not one by one: a worker holds a
-- few hundred of them, renewed every quarter of a lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local members, first_lock, nlocks = {}, {}, {}
local k = 4
for i = 5, #ARGV, 2 do
  members[#members + 1] = ARGV[i]
  first_lock[#members] = k
  nlocks[#members] = tonumber(ARGV[i + 1])
  k = k + nlocks[#members]
end
local lost = {}
for from = 1, #members, 1000 do
  local last = math.min(from + 999, #members)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(members, from, last))
  local renew = {}
  for n = from, last do
    if scores[n - from + 1] then
      renew[#renew + 1] = expiry
      renew[#renew + 1] = members[n]
      for j = first_lock[n], first_lock[n] + nlocks[n] - 1 do redis.call('PEXPIRE', KEYS[j], ARGV[4]) end
    else
      lost[#lost + 1] = members[n]
    end
  end
  if #renew > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(renew)) end
end
return lost
