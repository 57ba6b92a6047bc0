-- reserve.lua: reserve room for one request on one key of a pool now, or book this
-- reservation's own future slot and answer how long to wait. See router_jobs/capacity.py.
--
-- KEYS[1]  spec      hash  key_id -> compact limits JSON {g,a,c,to,ci,co,wt,L=[[ms,r,t,i,o]..]}
-- KEYS[2]  gspec     hash  group  -> compact limits JSON {c,L}
-- KEYS[3]  state     hash  key_id -> state JSON {s,u,r,fp} (absent: active)
-- KEYS[4]  log       zset  lex (score 0): "<scope>\31<ms>\31<ts 15 digits>\31<rid>\31r,t,i,o"
-- KEYS[5]  sums      hash  "<scope>\31<ms>\31" -> "r t i o last_ts" of the live entries
--                           (a bucket row adds "T I": bucketlib.lua)
-- KEYS[6]  res       hash  reservation id -> record JSON
-- KEYS[7]  rexp      zset  reservation id -> epoch ms when the record is dropped
-- KEYS[8]  lease     zset  "<key>\31<group>\31<rid>" -> epoch ms when the lease expires
-- KEYS[9]  inflight  hash  "k:<key_id>" / "g:<group>" -> leases held
-- KEYS[10] stats     hash  "<key_id>\31ee" / "<key_id>\31le" -> error-rate / latency EWMA
-- KEYS[11..] per requested model, in preference order: free zset, cost zset
-- ARGV[1] reservation id     ARGV[2] input tokens     ARGV[3] max output tokens
-- ARGV[4] objective (fairness|cost|reliability|latency)
-- ARGV[5] margin ms added to every window     ARGV[6] lease grace ms
-- ARGV[7] record keep ms     ARGV[8] concurrency poll ms     ARGV[9] late tolerance ms
-- ARGV[10] excluded key ids joined by \31     ARGV[11..] model names (same order as KEYS)
-- Returns {'g', key_id, model, slot_ms} or {'w', wait_ms, reason, retryable 0|1}.

local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local rid = ARGV[1]
local nin, nout = tonumber(ARGV[2]), tonumber(ARGV[3])
local W = {1, nin + nout, nin, nout}
local UNIT = {1, 1, 1, 1}
local objective = ARGV[4]
local margin, grace, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cpoll, late = tonumber(ARGV[8]), tonumber(ARGV[9])
local excluded = {}
for k in string.gmatch(ARGV[10], '[^\31]+') do excluded[k] = true end
local models = {}
for i = 11, #ARGV do models[#models + 1] = ARGV[i] end

--@include windowlib

-- earliest time at which w fits in this log (now, or >= the last entry when the live total
-- has no room: entries are then appended in time order); -1: never (w > limit)
local function log_fit(prefix, ms, lim, s, w)
  local need = false
  local I, paced = bucket_of(lim, margin)
  for u = 1, 4 do
    local l = lim[u + 1]
    if l > 0 and not (u == 1 and paced) then
      if w[u] > l then return -1 end
      if s[u] + w[u] > l then need = true end
    end
  end
  local at = now
  if paced then
    -- a bucket row's request count: its theoretical arrival time decides (bucketlib)
    if w[1] > lim[2] then return -1 end
    local b = bucket_fit(s, I, lim[2], w[1], margin)
    if b > at then at = math.ceil(b) end
  end
  -- the live total (booked future entries included) leaves room: no window can hold more
  -- than the total, so the entry may go in now, even before booked slots (refunded room is
  -- usable at once)
  if not need then return at end
  if s[5] > at then at = s[5] end
  -- walk from the newest entry back: the entries that may stay in the window must leave
  -- room for w; the first one that does not fit must have left the window by then
  local acc = {0, 0, 0, 0}
  local lo = '[' .. prefix
  local cursor = '(' .. prefix .. '\255'
  while true do
    local batch = redis.call('ZREVRANGEBYLEX', KEYS[4], cursor, lo, 'LIMIT', 0, 64)
    if #batch == 0 then return at end
    for _, m in ipairs(batch) do
      local ts, ew = parse_member(m, #prefix)
      for u = 1, 4 do
        local l = lim[u + 1]
        if u == 1 and paced then l = 0 end
        if l > 0 and acc[u] + ew[u] + w[u] > l then
          local e = ts + ms + wmargin(ms)
          if e > at then at = e end
          return at
        end
      end
      for u = 1, 4 do acc[u] = acc[u] + ew[u] end
    end
    cursor = '(' .. batch[#batch]
  end
end

-- state of a key: nil when it can never serve now (disabled/invalid), else the time it is usable from
local function available_from(kid, spec)
  if spec.a == 0 then return nil, 'disabled in keys file' end
  local raw = redis.call('HGET', KEYS[3], kid)
  if not raw then return now end
  local st = cjson.decode(raw)
  if st.s == 'disabled' or st.s == 'invalid' then return nil, st.s end
  if st.u and st.u > now then return st.u, st.s end
  return now
end

-- scopes a key is charged in: {prefix-scope, limits list, concurrency, inflight field}
local gcache = {}
local function scopes(kid, spec)
  local out = {{'k:' .. kid, spec.L, spec.c, 'k:' .. kid}}
  if spec.g and spec.g ~= '' then
    local g = gcache[spec.g]
    if g == nil then
      local raw = redis.call('HGET', KEYS[2], spec.g)
      g = raw and cjson.decode(raw) or false
      gcache[spec.g] = g
    end
    if g then out[2] = {'g:' .. spec.g, g.L, g.c, 'g:' .. spec.g} end
  end
  return out
end

-- exact earliest time this key can take w: at (>= now) and headroom, or -1 and a reason
local function key_fit(kid, spec, w)
  local at, why = available_from(kid, spec)
  if at == nil then return -1, why, 0 end
  local head = 1e18
  for _, sc in ipairs(scopes(kid, spec)) do
    for _, lim in ipairs(sc[2]) do
      local prefix = sc[1] .. SEP .. lim[1] .. SEP
      local s = trim(prefix, lim[1], lim)
      local f = log_fit(prefix, lim[1], lim, s, w)
      if f < 0 then return -1, 'request larger than a limit of ' .. sc[1], 0 end
      if f > at then at = f end
      local I, paced = bucket_of(lim, margin)
      for u = 1, 4 do
        local l = lim[u + 1]
        if l > 0 then
          local h = (l - s[u] - w[u]) / l
          if u == 1 and paced then h = bucket_headroom(s, I, l, w[1], now) end
          if h < head then head = h end
        end
      end
    end
    if sc[3] and sc[3] > 0 then
      local n = tonumber(redis.call('HGET', KEYS[9], sc[4]) or '0')
      if n >= sc[3] and at < now + cpoll then at = now + cpoll end
    end
  end
  return at, why, head
end

-- keep the free index true for this key: the picked key goes behind the keys idle for longer
-- (score now); a key with room keeps its place; a key without room moves to when it has some
local function rescore(kid, spec, fkey, picked)
  local at = key_fit(kid, spec, UNIT)
  if at < 0 then
    redis.call('ZADD', fkey, 'XX', '+inf', kid)
  elseif picked or at > now then
    redis.call('ZADD', fkey, 'XX', at, kid)
  else
    redis.call('ZADD', fkey, 'XX', 'LT', at, kid)
  end
end

-- write this reservation's entries at time `at` in every log of the key (and its group)
local function append(kid, spec, at)
  local prefixes = {}
  for _, sc in ipairs(scopes(kid, spec)) do
    for _, lim in ipairs(sc[2]) do
      local prefix = sc[1] .. SEP .. lim[1] .. SEP
      local s = trim(prefix, lim[1], lim)
      redis.call('ZADD', KEYS[4], 0, prefix .. pad(at) .. SEP .. rid .. SEP .. wstr(W))
      for u = 1, 4 do s[u] = s[u] + W[u] end
      if at > s[5] then s[5] = at end
      bucket_added(s, at, W[1])
      write_sums(prefix, s)
      prefixes[#prefixes + 1] = prefix
    end
  end
  return prefixes
end

local function remove_entries(rec)
  for _, prefix in ipairs(rec.p) do
    local m = prefix .. pad(rec.t) .. SEP .. rid .. SEP .. wstr(rec.w)
    if redis.call('ZREM', KEYS[4], m) == 1 then
      local s = read_sums(prefix)
      for u = 1, 4 do s[u] = math.max(0, s[u] - rec.w[u]) end
      bucket_taken_out(KEYS[4], prefix, s, rec.t, rec.w[1])
      write_sums(prefix, s)
    end
  end
end

local function take_lease(kid, spec, rec)
  local g = spec.g or ''
  local lm = kid .. SEP .. g .. SEP .. rid
  redis.call('ZADD', KEYS[8], now + spec.to + grace, lm)
  redis.call('HINCRBY', KEYS[9], 'k:' .. kid, 1)
  if g ~= '' then redis.call('HINCRBY', KEYS[9], 'g:' .. g, 1) end
  rec.lm = lm
  rec.s = 'g'
  redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
  redis.call('ZADD', KEYS[7], now + spec.to + grace + keep, rid)
end

local function model_keys(model)
  for i, m in ipairs(models) do
    if m == model then return KEYS[10 + 2 * i - 1] end
  end
  return nil
end

sweep()

-- idempotency: a known reservation id answers what it was given
local raw = redis.call('HGET', KEYS[6], rid)
if raw then
  local rec = cjson.decode(raw)
  if rec.s == 'g' then return {'g', rec.k, rec.m, tostring(rec.t)} end
  if rec.s == 'd' then return {'w', 0, 'reservation already settled; use a new reservation id', 0} end
  if rec.t > now then return {'w', rec.t - now, 'booked slot on a full pool', 1} end
  local spec_raw = redis.call('HGET', KEYS[1], rec.k)
  local spec = spec_raw and cjson.decode(spec_raw)
  local from = spec and available_from(rec.k, spec)
  if from and from <= now and now - rec.t <= late then
    for _, sc in ipairs(scopes(rec.k, spec)) do
      if sc[3] and sc[3] > 0 and tonumber(redis.call('HGET', KEYS[9], sc[4]) or '0') >= sc[3] then
        return {'w', cpoll, 'booked key is at its concurrency limit', 1}
      end
    end
    take_lease(rec.k, spec, rec)
    local fk = model_keys(rec.m)
    if fk then rescore(rec.k, spec, fk, true) end
    return {'g', rec.k, rec.m, tostring(rec.t)}
  end
  -- the key is out for a moment only (the provider's reset falls just after the slot, a
  -- short cooldown): keep the slot and come back when the key is back, instead of giving
  -- the slot up and queueing behind every booking of the window
  if from and from > now and from - rec.t <= late then
    return {'w', from - now, 'booked slot: key back in ' .. (from - now) .. ' ms', 1}
  end
  -- came too late for its slot, or the key went out of rotation: give the slot up, choose again
  remove_entries(rec)
  redis.call('HDEL', KEYS[6], rid)
  redis.call('ZREM', KEYS[7], rid)
end

local FAIR_ENOUGH = 4
local CHOICE = (objective == 'fairness') and FAIR_ENOUGH or 16
local SCAN = 64

local best = nil        -- earliest future slot: {at, kid, spec, model, fkey}
local could_ever = false
local reasons = {}
local scan_cut = false

local function metric(c)
  if objective == 'cost' then
    return (nin * c.spec.ci + nout * c.spec.co)
  elseif objective == 'reliability' then
    return tonumber(redis.call('HGET', KEYS[10], c.kid .. SEP .. 'ee') or '0')
  elseif objective == 'latency' then
    return tonumber(redis.call('HGET', KEYS[10], c.kid .. SEP .. 'le') or '0')
  end
  return -(c.head * c.spec.wt)
end

for mi, model in ipairs(models) do
  local fkey, ckey = KEYS[10 + 2 * mi - 1], KEYS[10 + 2 * mi]
  local grantable = {}
  local seen = {}
  local function examine(kid, score)
    if seen[kid] then return end
    seen[kid] = true
    if excluded[kid] then reasons[#reasons + 1] = kid .. ': excluded'; return end
    local spec_raw = redis.call('HGET', KEYS[1], kid)
    if not spec_raw then redis.call('ZREM', fkey, kid); return end
    local spec = cjson.decode(spec_raw)
    local at, why, head = key_fit(kid, spec, W)
    if at < 0 then
      reasons[#reasons + 1] = kid .. ': ' .. why
    else
      could_ever = true
      if at <= now then
        grantable[#grantable + 1] = {kid = kid, spec = spec, head = head}
      elseif best == nil or at < best.at then
        best = {at = at, kid = kid, spec = spec, model = model, fkey = fkey}
      end
    end
    -- a key with room whose score already says so keeps its place without a second check
    if not (at >= 0 and at <= now and score and score <= now) then rescore(kid, spec, fkey, false) end
  end
  if objective == 'cost' then
    local cheap = redis.call('ZRANGE', ckey, 0, SCAN - 1)
    for _, kid in ipairs(cheap) do
      local sc = redis.call('ZSCORE', fkey, kid)
      if sc and tonumber(sc) <= now then examine(kid, tonumber(sc)) end
      if #grantable >= CHOICE then break end
    end
  end
  if #grantable < CHOICE then
    local cands = redis.call('ZRANGEBYSCORE', fkey, '-inf', '(inf', 'WITHSCORES', 'LIMIT', 0, SCAN)
    local n = #cands / 2
    for j = 1, n do
      local kid, sc = cands[2 * j - 1], tonumber(cands[2 * j])
      if sc > now and #grantable > 0 then break end
      if best and sc >= best.at then break end
      examine(kid, sc)
      if #grantable >= CHOICE then break end
    end
    if n >= SCAN and not could_ever then scan_cut = true end
    -- infinite scores are keys out of rotation; name them for the reason
    if not could_ever and #grantable == 0 then
      local dead = redis.call('ZRANGEBYSCORE', fkey, '+inf', '+inf', 'LIMIT', 0, 3)
      for _, kid in ipairs(dead) do
        local st = redis.call('HGET', KEYS[3], kid)
        local why = 'out of rotation'
        if st then
          st = cjson.decode(st)
          why = st.s .. ((st.r and st.r ~= '') and (' (' .. st.r .. ')') or '')
        end
        reasons[#reasons + 1] = kid .. ': ' .. why
      end
    end
  end
  if #grantable > 0 then
    local pick, pm = nil, nil
    for _, c in ipairs(grantable) do
      local m = metric(c)
      if pick == nil or m < pm then pick, pm = c, m end
    end
    local rec = {k = pick.kid, g = pick.spec.g or '', m = model, t = now, w = W}
    rec.p = append(pick.kid, pick.spec, now)
    take_lease(pick.kid, pick.spec, rec)
    rescore(pick.kid, pick.spec, fkey, true)
    return {'g', pick.kid, model, tostring(now)}
  end
end

if best then
  local rec = {k = best.kid, g = best.spec.g or '', m = best.model, t = best.at, w = W, s = 'b'}
  rec.p = append(best.kid, best.spec, best.at)
  redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
  redis.call('ZADD', KEYS[7], best.at + best.spec.to + grace + keep, rid)
  rescore(best.kid, best.spec, best.fkey, true)
  return {'w', best.at - now, 'booked slot on a full pool', 1}
end
if scan_cut then return {'w', 1000, 'no key with room among the first keys scanned', 1} end
local why = 'no key serves ' .. table.concat(models, ', ')
if #reasons > 0 then why = why .. ' (' .. table.concat(reasons, '; ', 1, math.min(#reasons, 8)) .. ')' end
if could_ever then return {'w', 1000, why, 1} end
return {'w', 0, why, 0}
