-- save_memo: write an item's memo, only while its delivery's lease stands, so a stale delivery never
-- overwrites it (worker/store/jobstore.py, JobStore.save_memo).
--
-- KEYS[1]: cu:inflight, the leases.
-- KEYS[2]: the item's input chunk (cu:{job:<id>}:in:<n>).
-- ARGV[1]: the owner, the delivery 'job:index:token'.
-- ARGV[2]: the item's index.
-- ARGV[3]: the memo, JSON.
-- Reply: 1 written, 0 the lease is gone (nothing written).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'm:' .. ARGV[2], ARGV[3])
return 1
