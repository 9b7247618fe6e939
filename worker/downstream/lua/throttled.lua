-- throttled: a 429 for a call to one endpoint: pause it (and the tenant, under an all-endpoints limit),
-- count it, and cut the endpoint's learned rate once per episode (worker/downstream/ratelimit.py,
-- RateLimiter.pause).
--
-- KEYS[1]: the endpoint's pause; KEYS[2]: the tenant's pause, or the endpoint's again when the tenant
-- has no all-endpoints limit; KEYS[3]: aims hash; KEYS[4]: the all-endpoints log whose aim to lower, or
-- the aims hash again for none; KEYS[5]: the endpoint's bucket, if it has one.
-- ARGV[1]: seconds; ARGV[2..4]: aim step, floor, memory (s); ARGV[5]: '1' to learn; ARGV[6..12]: cut
-- share, least rate, measuring time (s), start rate, ceiling (0: none), guard (s), how long the
-- bucket's state lasts unused (s); ARGV[13]: calls this process made without a token and has not
-- reported yet (a slow start that holds no one back lets it).
-- Reply: 1 when the rate was cut, else 0.
-- Extends the pauses, never shortens them; cuts to a share of the rate the downstream accepted
-- lately (calls sent, less the 429s), and starts a new epoch, whose tokens start after the pause:
-- the tokens reserved at the old rate are void.

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
local untill = now + tonumber(ARGV[1])
for k = 1, 2 do
  local current = tonumber(redis.call('GET', KEYS[k]) or '0')
  if untill > current then redis.call('SET', KEYS[k], tostring(untill), 'EX', math.ceil(tonumber(ARGV[1])) + 1) end
end
if KEYS[4] ~= KEYS[3] then
  local aim = tonumber(redis.call('HGET', KEYS[3], KEYS[4]) or '1')
  redis.call('HSET', KEYS[3], KEYS[4], tostring(math.max(tonumber(ARGV[3]), aim * tonumber(ARGV[2]))))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
if not KEYS[5] then return 0 end
local memory = tonumber(ARGV[12])
local b = load(KEYS[5])
put(b, 'throttled', (tonumber(b.throttled) or 0) + 1)
if ARGV[5] ~= '1' then
  save(b, now, memory)
  return 0
end
local tau = tonumber(ARGV[8])
local start, ceiling = tonumber(ARGV[9]), tonumber(ARGV[10])
local rate = tonumber(b.rate) or (ceiling > 0 and ceiling or start)
local m = math.max(0, count_sent(b, now, tau, tonumber(ARGV[13])) - 1)
put(b, 'm', m)
local m0 = tonumber(b.m0 or now)
local accepted = m / (tau * (1 - math.exp(-math.max(now - m0, 0.5) / tau)))
if now < (tonumber(b.cut) or 0) then
  save(b, now, memory)
  return 0
end
local share, least = tonumber(ARGV[6]), tonumber(ARGV[7])
local cut, base
if b.base then
  -- a found rate: never below half of it at one cut, as TCP halves its window: a 429 among a few
  -- calls says little (a limit all endpoints share may have refused it)
  local basis = math.min(rate, accepted)
  cut = math.max(least, share * basis, rate / 2)
  base = math.max(basis, cut)
else
  -- the first 429 ends the slow start, whose rate may be far past the limit (its tokens went out
  -- at the pace projected for them, or without tokens): cut to a share of what the downstream
  -- accepted; climb back towards it, or half the slow start's rate (TCP's ssthresh), quickly
  cut = math.max(least, share * accepted)
  base = math.max(accepted, rate / 2, cut)
end
put(b, 'rate', cut)
put(b, 'base', base)
put(b, 'tat', untill)
put(b, 'grew', untill)
put(b, 'cut', untill + tonumber(ARGV[11]))
put(b, 'epoch', (tonumber(b.epoch) or 0) + 1)
save(b, now, memory)
return 1
