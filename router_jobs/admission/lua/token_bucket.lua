-- Per-user and global submit limits: two token buckets, charged both-or-neither.
-- KEYS[1] global bucket hash   KEYS[2] per-user overrides hash   KEYS[3] user bucket hash (absent: no user)
-- ARGV[1] "take" or "peek"   ARGV[2] cost (tokens)   ARGV[3] global per minute   ARGV[4] global burst
-- ARGV[5] default user per minute   ARGV[6] default user burst   ARGV[7] user id ("" for none)
-- A bucket hash holds `tokens` and `ts` (server microseconds of that level). Clock: TIME.
-- Returns {admitted 1|0, retry_after seconds ("inf" when the cost exceeds a burst),
--          refusing scope ("", "user" or "global"), now_us, global tokens, user tokens,
--          user per minute, user burst}  (numbers as strings: Lua floats are cut by Redis).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local take = ARGV[1] == 'take'
local cost = tonumber(ARGV[2])
local g_rate = tonumber(ARGV[3]) / 60000000
local g_burst = tonumber(ARGV[4])
local has_user = #KEYS >= 3 and ARGV[7] ~= ''
local u_rate = tonumber(ARGV[5]) / 60000000
local u_burst = tonumber(ARGV[6])
if has_user then
  local o = redis.call('HGET', KEYS[2], ARGV[7])
  if o then
    local rpm, burst = string.match(o, '^([^:]+):([^:]+)$')
    if rpm and burst then
      u_rate = tonumber(rpm) / 60000000
      u_burst = tonumber(burst)
    end
  end
end

local function level(key, rate, burst)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then return burst end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  return math.min(burst, tokens + elapsed * rate)
end

local function wait_s(tokens, rate, burst)
  if tokens >= cost then return 0 end
  if cost > burst then return math.huge end
  return (cost - tokens) / rate / 1000000
end

local g_tokens = level(KEYS[1], g_rate, g_burst)
local u_tokens = -1
if has_user then u_tokens = level(KEYS[3], u_rate, u_burst) end

local g_wait = wait_s(g_tokens, g_rate, g_burst)
local u_wait = 0
if has_user then u_wait = wait_s(u_tokens, u_rate, u_burst) end

local function fmt(x)
  if x == math.huge then return 'inf' end
  return string.format('%.17g', x)
end
local function result(admitted, wait, scope)
  return {admitted, fmt(wait), scope, string.format('%.0f', now), fmt(g_tokens), fmt(u_tokens),
    fmt(u_rate * 60000000), fmt(u_burst)}
end

if g_wait > 0 or u_wait > 0 then
  local scope = 'global'
  if u_wait >= g_wait then scope = 'user' end
  return result(0, math.max(g_wait, u_wait), scope)
end
if take and cost > 0 then
  g_tokens = g_tokens - cost
  redis.call('HSET', KEYS[1], 'tokens', fmt(g_tokens), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], math.min(math.ceil(g_burst / g_rate / 1000) + 1000, 2592000000))
  if has_user then
    u_tokens = u_tokens - cost
    redis.call('HSET', KEYS[3], 'tokens', fmt(u_tokens), 'ts', string.format('%.0f', now))
    redis.call('PEXPIRE', KEYS[3], math.min(math.ceil(u_burst / u_rate / 1000) + 1000, 2592000000))
  end
end
return result(1, 0, '')
