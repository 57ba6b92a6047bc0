-- windowlib.lua: the window-log primitives of the key pool, included where a script says
-- "--@include windowlib" (after it has set now, margin, grace, keep and cpoll): member
-- encoding, running sums, the sweep of expired reservations and leases, and trimming a log
-- to its window. Touches only KEYS[1..10], laid out as in reserve.lua:
-- KEYS[1] spec  KEYS[2] gspec  KEYS[3] state  KEYS[4] log  KEYS[5] sums  KEYS[6] res
-- KEYS[7] rexp  KEYS[8] lease  KEYS[9] inflight  KEYS[10] stats
-- ARGV: none of its own.

local SEP = '\31'

--@include bucketlib

local function pad(ms) return string.format('%015d', ms) end

local function wstr(w) return w[1] .. ',' .. w[2] .. ',' .. w[3] .. ',' .. w[4] end

local function parse_member(m, plen)
  local ts = tonumber(string.sub(m, plen + 1, plen + 15))
  local a, b, c, d = string.match(m, '(%d+),(%d+),(%d+),(%d+)$')
  return ts, {tonumber(a), tonumber(b), tonumber(c), tonumber(d)}
end

-- "r t i o last" per row, and for a bucket row " T I" (bucketlib)
local function read_sums(prefix)
  return bucket_sums(redis.call('HGET', KEYS[5], prefix))
end

local function write_sums(prefix, s)
  redis.call('HSET', KEYS[5], prefix, bucket_sums_text(s))
end

-- housekeeping: expired concurrency leases and old reservation records, a few per call
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, 32)
  for _, lm in ipairs(due) do
    local k, g = string.match(lm, '^([^\31]*)\31([^\31]*)\31')
    if k and redis.call('HINCRBY', KEYS[9], 'k:' .. k, -1) < 0 then redis.call('HSET', KEYS[9], 'k:' .. k, 0) end
    if g and g ~= '' and redis.call('HINCRBY', KEYS[9], 'g:' .. g, -1) < 0 then
      redis.call('HSET', KEYS[9], 'g:' .. g, 0)
    end
    redis.call('ZREM', KEYS[8], lm)
  end
  local old = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 32)
  for _, r in ipairs(old) do
    redis.call('HDEL', KEYS[6], r)
    redis.call('ZREM', KEYS[7], r)
  end
end

-- the margin of a window of `ms`: the pool's margin, but at most 1/40 of the window (a 1 s
-- window keeps 25 ms). Entries are stamped when the request left the worker, so the margin
-- covers the network's transit and the reading of clocks; a fixed 100 ms would cost a
-- per-second limit a tenth of the key.
local function wmargin(ms) return math.min(margin, math.max(5, math.floor(ms / 40))) end

-- drop entries that left the window (ts + ms + wmargin(ms) <= now); return the live sums
-- (given the row `lim`, a bucket row's T is made true for it first: bucketlib)
local trimmed = {}
local function trim(prefix, ms, lim)
  local s = read_sums(prefix)
  if trimmed[prefix] then return s end
  trimmed[prefix] = true
  if lim and bucket_prepare(s, lim, now) then write_sums(prefix, s) end
  local hi = '(' .. prefix .. pad(now - ms - wmargin(ms) + 1)
  local changed = false
  while true do
    local old = redis.call('ZRANGEBYLEX', KEYS[4], '[' .. prefix, hi, 'LIMIT', 0, 100)
    if #old == 0 then break end
    for _, m in ipairs(old) do
      local _, w = parse_member(m, #prefix)
      for u = 1, 4 do s[u] = s[u] - w[u] end
    end
    redis.call('ZREM', KEYS[4], unpack(old))
    changed = true
    if #old < 100 then break end
  end
  if changed then
    for u = 1, 4 do if s[u] < 0 then s[u] = 0 end end
    write_sums(prefix, s)
  end
  return s
end
