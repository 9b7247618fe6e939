-- pause_left: how long an endpoint (or its whole tenant) is paused by a 429, with its bucket's epoch;
-- reports the calls this process made on reserved tokens (or skipping the bucket) since it last said
-- (worker/downstream/ratelimit.py, RateLimiter._pause_check).
--
-- KEYS[1], KEYS[2]: the tenant's and the endpoint's pause; KEYS[3]: the endpoint's bucket, if it has one.
-- ARGV[1]: calls this process made on reserved tokens or skipping the bucket since it last said;
-- ARGV[2]: the measuring time (s); ARGV[3]: the bucket's ceiling per second (0: none); ARGV[4]: '1'
-- to learn; ARGV[5]: how long the bucket's state lasts unused (s).
-- Reply: {seconds the longer pause holds for (on Redis's clock), the bucket's epoch, 1 while it is in
-- its slow start, else 0}.

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
local left = math.max(0, tonumber(pauses[1] or '0') - now, tonumber(pauses[2] or '0') - now)
local epoch, slow = '0', 0
if KEYS[3] then
  local b = load(KEYS[3])
  local ceiling = tonumber(ARGV[3])
  if tonumber(ARGV[1]) > 0 then
    count_sent(b, now, tonumber(ARGV[2]), tonumber(ARGV[1]))
    -- reserved tokens used: the endpoint is busy, though its items ask for no new tokens
    if ARGV[4] == '1' and b.rate then
      put(b, 'rate', grown(b, now, tonumber(b.rate), tonumber(b.base), ceiling, tonumber(b.grew)))
      put(b, 'grew', now)
    end
    save(b, now, tonumber(ARGV[5]))
  end
  epoch = b.epoch or '0'
  if ARGV[4] == '1' and not b.base and not (ceiling > 0 and (tonumber(b.rate) or ceiling) >= ceiling) then slow = 1 end
end
return {tostring(left), epoch, slow}
