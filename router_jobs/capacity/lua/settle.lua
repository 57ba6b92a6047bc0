-- settle.lua: replace a reservation's token estimate with the real usage, release its
-- concurrency lease; or give back a booked slot. Idempotent. See router_jobs/capacity.py.
--
-- KEYS[1] res       hash  reservation id -> record JSON (written by reserve.lua)
-- KEYS[2] log       zset  lex window-log entries of the pool
-- KEYS[3] sums      hash  "<scope>\31<ms>\31" -> "r t i o last_ts" (a bucket row adds
--                   "T I", kept true here: bucketlib.lua)
-- KEYS[4] lease     zset  lease member -> expiry ms
-- KEYS[5] inflight  hash  "k:<key_id>" / "g:<group>" -> leases held
-- KEYS[6] stats     hash  "<key_id>\31ovt" / "\31ovn" -> overrun tokens / overrun calls
-- KEYS[7..] free zsets of every model the key serves
-- ARGV[1] reservation id
-- ARGV[2] mode: 'usage' (ARGV[3] input, ARGV[4] output tokens), 'refund' (tokens back,
--         the request stays counted), 'release' (a booked slot is given back entirely;
--         on a granted reservation it acts as 'refund'), 'sent' (the request has just
--         left: its entries are stamped now; nothing else changes)
-- ARGV[5] ms since the request left the worker (-1 or absent: not known)
-- Returns 1 when settled now, 0 when unknown or already settled.
--
-- A granted request is stamped again with the moment it left the worker (ARGV[5] ms ago;
-- never earlier than its stamp): the provider counted it then, plus the network's transit,
-- which the margin covers. When that moment is not known it is stamped with the settle
-- time: the provider received it somewhere between the claim and now, so its entry leaves
-- our windows only after the provider's copy has, however long the request took to reach
-- the provider on a busy worker.

local SEP = '\31'
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local rid, mode = ARGV[1], ARGV[2]

local raw = redis.call('HGET', KEYS[1], rid)
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec.s == 'd' then return 0 end

local function pad(ms) return string.format('%015d', ms) end
local function wstr(w) return w[1] .. ',' .. w[2] .. ',' .. w[3] .. ',' .. w[4] end

--@include bucketlib

-- move each window entry of the record from rec.t to ts with weights neww (nil: drop it),
-- keeping the running sums; an entry already trimmed is written again when ts is later
local function restamp(ts, neww)
  for _, prefix in ipairs(rec.p) do
    local old = prefix .. pad(rec.t) .. SEP .. rid .. SEP .. wstr(rec.w)
    local present = redis.call('ZREM', KEYS[2], old) == 1
    if present or (neww and ts > rec.t) then
      local s = bucket_sums(redis.call('HGET', KEYS[3], prefix))
      if present then for u = 1, 4 do s[u] = s[u] - rec.w[u] end end
      if neww then
        redis.call('ZADD', KEYS[2], 0, prefix .. pad(ts) .. SEP .. rid .. SEP .. wstr(neww))
        for u = 1, 4 do s[u] = s[u] + neww[u] end
        if ts > s[5] then s[5] = ts end
      end
      -- a bucket row's arrival time follows (bucketlib): the request weight never changes
      if s[7] then
        if not neww then
          bucket_taken_out(KEYS[2], prefix, s, rec.t, rec.w[1])
        elseif ts > rec.t then
          bucket_moved_later(KEYS[2], prefix, s, rec.t, neww[1])
        end
      end
      for u = 1, 4 do if s[u] < 0 then s[u] = 0 end end
      redis.call('HSET', KEYS[3], prefix, bucket_sums_text(s))
    end
  end
  rec.t = ts
end

-- 'sent': the request has just left the worker; its entries move to now (never earlier),
-- while the call goes on: a short window's next admission then follows the real send
if mode == 'sent' then
  if rec.s ~= 'g' or now <= rec.t then return 0 end
  restamp(now, rec.w)
  redis.call('HSET', KEYS[1], rid, cjson.encode(rec))
  return 1
end

local neww
if mode == 'usage' then
  local i, o = tonumber(ARGV[3]), tonumber(ARGV[4])
  neww = {1, i + o, i, o}
  local over = neww[2] - rec.w[2]
  if over > 0 then
    redis.call('HINCRBY', KEYS[6], rec.k .. SEP .. 'ovt', over)
    redis.call('HINCRBY', KEYS[6], rec.k .. SEP .. 'ovn', 1)
  end
elseif mode == 'release' and rec.s == 'b' then
  neww = nil
else
  neww = {1, 0, 0, 0}
end

local ts = rec.t
local sent_ago = tonumber(ARGV[5] or '-1') or -1
if rec.s == 'g' then
  local left = now
  if sent_ago >= 0 then left = now - sent_ago end
  if left > ts then ts = left end
end
restamp(ts, neww)

if rec.lm and redis.call('ZREM', KEYS[4], rec.lm) == 1 then
  if redis.call('HINCRBY', KEYS[5], 'k:' .. rec.k, -1) < 0 then redis.call('HSET', KEYS[5], 'k:' .. rec.k, 0) end
  if rec.g ~= '' and redis.call('HINCRBY', KEYS[5], 'g:' .. rec.g, -1) < 0 then
    redis.call('HSET', KEYS[5], 'g:' .. rec.g, 0)
  end
end

if neww then rec.w = neww end
rec.s = 'd'
redis.call('HSET', KEYS[1], rid, cjson.encode(rec))
-- room may have come back: let the next reserve look at this key again (it rechecks exactly)
for i = 7, #KEYS do redis.call('ZADD', KEYS[i], 'XX', 'LT', now, rec.k) end
return 1
