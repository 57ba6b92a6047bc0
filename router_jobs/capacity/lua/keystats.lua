-- keystats.lua: record one call's outcome on a key: error-rate and latency EWMAs,
-- per-minute success/error counters, recent latency samples. See router_jobs/keyhealth.py.
--
-- KEYS[1] stats     hash  "<key_id>\31ee" / "<key_id>\31le" -> EWMA
-- KEYS[2] counters  hash  "ok:<minute>" / "er:<minute>" -> calls of this key in that minute
-- KEYS[3] latency   list  latest latencies in ms (newest first)
-- ARGV[1] key_id  ARGV[2] ok (1|0)  ARGV[3] latency ms (-1: unknown)
-- ARGV[4] EWMA alpha  ARGV[5] samples kept  ARGV[6] minutes of counters kept
-- Returns 1.

local SEP = '\31'
local tm = redis.call('TIME')
local minute = math.floor(tonumber(tm[1]) / 60)
local kid, ok, lat = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local alpha, samples, minutes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local function ewma(field, x)
  local cur = redis.call('HGET', KEYS[1], kid .. SEP .. field)
  local v = x
  if cur then v = alpha * x + (1 - alpha) * tonumber(cur) end
  redis.call('HSET', KEYS[1], kid .. SEP .. field, tostring(v))
end

ewma('ee', ok == 1 and 0 or 1)
if ok == 1 and lat >= 0 then
  ewma('le', lat)
  redis.call('LPUSH', KEYS[3], lat)
  redis.call('LTRIM', KEYS[3], 0, samples - 1)
end
redis.call('HINCRBY', KEYS[2], (ok == 1 and 'ok:' or 'er:') .. minute, 1)
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  local m = tonumber(string.sub(f, 4))
  if m and m < minute - minutes then redis.call('HDEL', KEYS[2], f) end
end
return 1
