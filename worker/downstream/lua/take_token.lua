-- take_token: a token for one call to one endpoint of one tenant, from the all-endpoints limit and the
-- endpoint's learned bucket together, in one round trip (worker/downstream/ratelimit.py, RateLimiter.acquire).
--
-- KEYS[1]: the tenant's pause; KEYS[2]: the endpoint's pause; KEYS[3]: aims hash (of the
-- all-endpoints limit); KEYS[4]: the all-endpoints log (a zset of call times), or the aims hash again
-- when there is no such limit; KEYS[5]: the endpoint's bucket, if it has one.
-- ARGV[1]: horizon (s); ARGV[2], ARGV[3]: the all-endpoints limit as at most n calls in any window
-- of w seconds (n 0: none); ARGV[4]: a member unique to this call; ARGV[5]: '1' to learn; ARGV[6..10]:
-- start rate (/s), slow-start growth per s, increase share, probe share, measuring time (s);
-- ARGV[11]: how long the bucket's state lasts unused (s); ARGV[12]: the horizon while a found rate
-- climbs back (s); ARGV[13], ARGV[14]: the bucket's ceiling per second (0: none)
-- and burst (s); ARGV[15]: reserved tokens this process used since it last said; ARGV[16], ARGV[17]:
-- spare tokens wanted, and how far ahead they may fall due (s).
-- Reply: {wait, now, epoch, free, slow, spares} (strings, seconds; now on Redis's clock): wait 0: a token taken
-- from every limit, use it now; -w: one reserved in every limit, use it in w seconds, if the bucket's
-- epoch is still this one (a cut starts a new one); +w: nothing taken, ask again in w. free '1': the
-- bucket is in its slow start, without a ceiling, and holds no one back (calls, measured for TAU
-- seconds, come slower than its rate): the caller may skip it for a while, counting its calls and
-- reporting them, while the slow start grows on. slow '1': the bucket is in its slow start (its
-- waits are short and soon gone: the caller may sleep through them in place). spares: the waits of
-- tokens reserved beyond this call's, for the process's next calls: only while a slow start without
-- any limit configured is busy (its tokens are taken as fast as they come), when every call would
-- otherwise be a round trip of its own, and no further ahead than a caller sleeps in place (each one
-- a token reserved in the order a call of its own would have reserved it).
-- The bucket is a GCRA: tat, the time its next token is due at its rate, less the burst. A rate
-- that changes spaces the tokens granted from then on, never the ones already reserved.

-- The rates' shared part: the same in take_token.lua, throttled.lua and pause_left.lua (Redis scripts
-- cannot share code; tests/unit/worker/test_lua.py holds the copies equal, and these constants equal
-- worker/downstream/ratelimit.py's MEASURE_SECONDS, SLOW_START_GROWTH, INCREASE_SHARE, PROBE_SHARE,
-- GROWTH_HEADROOM and FOUND_GROWTH_HEADROOM).
local TAU, GROWTH, INCREASE, PROBE, HEADROOM, FOUND_HEADROOM = 2.0, 4.0, 0.1, 0.05, 2.0, 1.25
-- A bucket's fields are read in one HMGET and written in one HSET, whatever a script does with them:
-- a script runs on every call that waits, so each command it saves is one less per such call.
local FIELDS = {'tat', 'rate', 'grew', 'base', 'epoch', 'm', 'mt', 'm0', 'waited', 'cut', 'throttled', 'kept'}
local function load(key)
  local values, b = redis.call('HMGET', key, unpack(FIELDS)), {key = key, dirty = {}}
  for i, name in ipairs(FIELDS) do
    if values[i] then b[name] = values[i] end
  end
  return b
end
local function put(b, name, value)
  b[name] = tostring(value)
  b.dirty[name] = true
end
-- Written, then kept for memory seconds unused: its expiry is pushed back when a tenth of it has
-- passed since the last push (kept), so a bucket lasts 0.9 to 1 times memory after its last use, for
-- one EXPIRE in many calls (after the write: a new bucket exists only then).
local function save(b, now, memory)
  local expire = now - (tonumber(b.kept) or 0) >= memory / 10
  if expire then put(b, 'kept', now) end
  local changed = {}
  for _, name in ipairs(FIELDS) do
    if b.dirty[name] then
      changed[#changed + 1] = name
      changed[#changed + 1] = b[name]
    end
  end
  if #changed > 0 then redis.call('HSET', b.key, unpack(changed)) end
  if expire then redis.call('EXPIRE', b.key, math.ceil(memory)) end
end
-- The calls an endpoint sent lately, for the next cut: a count decaying over tau seconds, from m0.
-- Calls are counted as they go out: a token used at once here, a reserved one (or a call made while
-- the bucket let the process skip it) by the process that made it, with its next script.
local function count_sent(b, now, tau, calls)
  local decayed = (tonumber(b.m) or 0) * math.exp(-math.max(0, now - (tonumber(b.mt) or now)) / tau)
  if decayed < 0.01 then put(b, 'm0', now) end
  put(b, 'm', decayed + calls)
  put(b, 'mt', now)
  return decayed + calls
end
local function sent_rate(b, now)
  local m, mt, m0 = tonumber(b.m), tonumber(b.mt), tonumber(b.m0)
  if not (m and mt and m0) then return 0 end
  return m * math.exp(-math.max(0, now - mt) / TAU) / (TAU * (1 - math.exp(-math.max(now - m0, 0.5) / TAU)))
end
-- The rate after the busy time since the last look: a slow start (no base yet) grows by GROWTH a
-- second, a found rate climbs back to its base additively, then probes by PROBE of itself a second;
-- never far past the rate calls went out at (a rate not used is not known to be allowed), never past
-- the ceiling.
local function grown(b, now, rate, base, ceiling, last)
  local dt = math.min(1, math.max(0, now - (last or now)))
  local new, headroom = rate, FOUND_HEADROOM
  if not base then new, headroom = rate * GROWTH ^ dt, HEADROOM
  elseif rate < base then new = rate + INCREASE * base * dt
  else new = rate * (1 + PROBE * dt) end
  new = math.min(new, math.max(rate, headroom * sent_rate(b, now)))
  if ceiling > 0 and new > ceiling then new = ceiling end
  return new
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pauses = redis.call('MGET', KEYS[1], KEYS[2])
local pause = math.max(tonumber(pauses[1] or '0'), tonumber(pauses[2] or '0'))
if pause > now then return {tostring(pause - now), tostring(now), '0', '0', '0', {}} end
local horizon = tonumber(ARGV[1])
local learn = ARGV[5] == '1'
local wait = 0
local n, w = tonumber(ARGV[2]), tonumber(ARGV[3])
if n > 0 then
  w = w / tonumber(redis.call('HGET', KEYS[3], KEYS[4]) or '1')
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - w)
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  local at = now
  if #last > 0 then at = math.max(at, tonumber(last[2])) end
  if redis.call('ZCARD', KEYS[4]) >= n then
    local nth = redis.call('ZRANGE', KEYS[4], -n, -n, 'WITHSCORES')
    at = math.max(at, tonumber(nth[2]) + w)
  end
  wait = at - now
end
local b
local epoch = '0'
local tat, rate, from
local slow, ceiling, slack = false, 0, 0
local free = '0'
if KEYS[5] then
  local start = tonumber(ARGV[6])
  local burst = tonumber(ARGV[14])
  ceiling = tonumber(ARGV[13])
  b = load(KEYS[5])
  if tonumber(ARGV[15]) > 0 then count_sent(b, now, tonumber(ARGV[10]), tonumber(ARGV[15])) end
  epoch = b.epoch or '0'
  rate = tonumber(b.rate)
  if not rate or not learn then
    if ceiling > 0 then rate = ceiling else rate = start end
  end
  if ceiling > 0 and rate > ceiling then rate = ceiling end
  slack = (math.max(1, rate * burst) - 1) / rate
  tat = tonumber(b.tat) or now
  from = math.max(tat, now)
  local due = math.max(now, from - slack)
  local base = tonumber(b.base)
  -- busy: callers wait for tokens; in a slow start, as soon as they come faster than its rate
  if learn and (due > now or (not base and tat > now)) then
    rate = grown(b, now, rate, base, ceiling, tonumber(b.grew))
  end
  slow = learn and not base and not (ceiling > 0 and rate >= ceiling)
  if learn and base and not (ceiling > 0 and rate >= ceiling) then
    -- a found rate that climbs back reserves less far ahead: only the tokens after the ones
    -- reserved take a new rate
    horizon = math.min(horizon, tonumber(ARGV[12]))
  end
  wait = math.max(wait, due - now)
  if slow and ceiling == 0 and n == 0 and tat <= now then
    if now - tonumber(b.m0 or now) >= TAU then free = '1' end
  end
  put(b, 'grew', now)
  if learn then put(b, 'rate', rate) end
  if wait > 0 then put(b, 'waited', (tonumber(b.waited) or 0) + wait) end
end
local in_slow_start = slow and '1' or '0'
local spares = {}
if wait > horizon then
  if b then save(b, now, tonumber(ARGV[11])) end
  return {tostring(wait), tostring(now), epoch, '0', in_slow_start, spares}
end
if b then
  if wait == 0 then count_sent(b, now, tonumber(ARGV[10]), 1) end
  local at = math.max(from, now + wait)
  local pace = rate
  if slow then
    -- a slow start spaces each token at the rate it will have grown to by then: tokens reserved
    -- ahead keep up with it, until a 429 voids them
    pace = rate * GROWTH ^ math.min(10, at - now)
    if ceiling > 0 then pace = math.min(pace, ceiling) end
  end
  tat = at + 1 / pace
  if slow and ceiling == 0 and n == 0 and from > now then
    local ahead = tonumber(ARGV[17])
    for _ = 1, tonumber(ARGV[16]) do
      local spare = math.max(now, tat - slack) - now
      if spare > ahead then break end
      spares[#spares + 1] = tostring(spare)
      tat = tat + 1 / (rate * GROWTH ^ math.min(10, tat - now))
    end
  end
  put(b, 'tat', tat)
  save(b, now, tonumber(ARGV[11]))
end
if n > 0 then
  redis.call('ZADD', KEYS[4], now + wait, ARGV[4])
  redis.call('EXPIRE', KEYS[4], math.ceil(w + horizon) + 60)
end
return {tostring(-wait), tostring(now), epoch, free, in_slow_start, spares}
