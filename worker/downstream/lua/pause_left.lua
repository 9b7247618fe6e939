-- pause_left: how long an endpoint (or its whole tenant) is paused by a 429, with its bucket's epoch;
-- reports the calls this process made on reserved tokens (or skipping the bucket) since it last said
-- (worker/downstream/ratelimit.py, RateLimiter._pause_check).
--
-- KEYS[1], KEYS[2]: the tenant's and the endpoint's pause; KEYS[3]: the endpoint's bucket, if it has one.
-- ARGV[1]: calls this process made on reserved tokens or skipping the bucket since it last said;
-- ARGV[2]: the measuring time (s); ARGV[3]: the bucket's ceiling per second (0: none); ARGV[4]: '1'
-- to learn.
-- Reply: {seconds the longer pause holds for (on Redis's clock), the bucket's epoch, 1 while it is in
-- its slow start, else 0}.

-- The rates' shared part: the same in take_token.lua, throttled.lua and pause_left.lua (Redis scripts
-- cannot share code; tests/unit/worker/test_lua.py holds the copies equal, and these constants equal
-- worker/downstream/ratelimit.py's MEASURE_SECONDS, SLOW_START_GROWTH, INCREASE_SHARE, PROBE_SHARE,
-- GROWTH_HEADROOM and FOUND_GROWTH_HEADROOM).
-- The calls an endpoint sent lately, for the next cut: a count decaying over tau seconds, from m0.
-- Calls are counted as they go out: a token used at once here, a reserved one (or a call made while
-- the bucket let the process skip it) by the process that made it, with its next script.
local TAU, GROWTH, INCREASE, PROBE, HEADROOM, FOUND_HEADROOM = 2.0, 4.0, 0.1, 0.05, 2.0, 1.25
local function count_sent(bucket, now, tau, calls)
  local s = redis.call('HMGET', bucket, 'm', 'mt')
  local decayed = (tonumber(s[1]) or 0) * math.exp(-math.max(0, now - (tonumber(s[2]) or now)) / tau)
  if decayed < 0.01 then redis.call('HSET', bucket, 'm0', tostring(now)) end
  redis.call('HSET', bucket, 'm', tostring(decayed + calls), 'mt', tostring(now))
  return decayed + calls
end
local function sent_rate(bucket, now)
  local s = redis.call('HMGET', bucket, 'm', 'mt', 'm0')
  local m, mt, m0 = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
  if not (m and mt and m0) then return 0 end
  return m * math.exp(-math.max(0, now - mt) / TAU) / (TAU * (1 - math.exp(-math.max(now - m0, 0.5) / TAU)))
end
-- The rate after the busy time since the last look: a slow start (no base yet) grows by GROWTH a
-- second, a found rate climbs back to its base additively, then probes by PROBE of itself a second;
-- never far past the rate calls went out at (a rate not used is not known to be allowed), never past
-- the ceiling.
local function grown(bucket, now, rate, base, ceiling, last)
  local dt = math.min(1, math.max(0, now - (last or now)))
  local new, headroom = rate, FOUND_HEADROOM
  if not base then new, headroom = rate * GROWTH ^ dt, HEADROOM
  elseif rate < base then new = rate + INCREASE * base * dt
  else new = rate * (1 + PROBE * dt) end
  new = math.min(new, math.max(rate, headroom * sent_rate(bucket, now)))
  if ceiling > 0 and new > ceiling then new = ceiling end
  return new
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if KEYS[3] and tonumber(ARGV[1]) > 0 then
  count_sent(KEYS[3], now, tonumber(ARGV[2]), tonumber(ARGV[1]))
  -- reserved tokens used: the endpoint is busy, though its items ask for no new tokens
  local s = redis.call('HMGET', KEYS[3], 'rate', 'base', 'grew')
  if ARGV[4] == '1' and s[1] then
    redis.call('HSET', KEYS[3], 'rate', tostring(grown(KEYS[3], now, tonumber(s[1]), tonumber(s[2]),
                                                            tonumber(ARGV[3]), tonumber(s[3]))),
               'grew', tostring(now))
  end
end
local left = math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - now,
                      tonumber(redis.call('GET', KEYS[2]) or '0') - now)
local epoch, slow = '0', 0
if KEYS[3] then
  local b = redis.call('HMGET', KEYS[3], 'epoch', 'base', 'rate')
  epoch = b[1] or '0'
  local ceiling = tonumber(ARGV[3])
  if ARGV[4] == '1' and not b[2] and not (ceiling > 0 and (tonumber(b[3]) or ceiling) >= ceiling) then slow = 1 end
end
return {tostring(left), epoch, slow}
