-- poollib.lua: helpers shared by admit.lua and claim.lua, included where a script says
-- "--@include poollib" (after it has set now, margin, grace, keep and cpoll). Touches only
-- KEYS[1..10], laid out as in reserve.lua:
-- KEYS[1] spec  KEYS[2] gspec  KEYS[3] state  KEYS[4] log  KEYS[5] sums  KEYS[6] res
-- KEYS[7] rexp  KEYS[8] lease  KEYS[9] inflight  KEYS[10] stats
-- ARGV: none of its own.

--@include windowlib

-- the limit of unit u as seen by a request class: `scale` (< 1 for batch work while part of
-- each key is held for interactive work) holds back a whole number of units, rounded down
-- (a key of 2 per minute holds nothing for a 2 % share instead of half of itself), and never
-- shrinks the limit below the request itself
local function scaled(l, scale, wu)
  if scale >= 1 then return l end
  local v = l - math.floor(l * (1 - scale) + 1e-6)
  if v < wu then v = wu end
  if v > l then v = l end
  return v
end

-- earliest time (>= now) at which w fits in this log; -1: never (w > limit). The log is kept
-- in stamp order (lexicographic members), so one walk from the newest entry back is exact.
local function log_fit(prefix, ms, lim, s, w, scale)
  local need = false
  local token_need = false
  local L = {0, 0, 0, 0}
  for u = 1, 4 do
    local l = lim[u + 1]
    if l > 0 then
      if w[u] > l then return -1 end
      L[u] = scaled(l, scale, w[u])
      if s[u] + w[u] > L[u] then
        need = true
        if u > 1 then token_need = true end
      end
    end
  end
  local at = now
  local I, paced = bucket_of(lim, margin)
  if paced then
    -- the request count of a bucket row: its theoretical arrival time alone decides
    local b = bucket_fit(s, I, L[1], w[1], margin)
    if b > at then at = math.ceil(b) end
    L[1] = 0
    if not token_need then return at end
  end
  if not need then return at end
  local lo = '[' .. prefix
  local cursor = '(' .. prefix .. '\255'
  if not token_need then
    -- only the request count is short, and every entry counts one request: the entry that
    -- must leave first is the (L - w + 1)-th newest, found by offset (no walk through a
    -- full window of entries, which made a step admitting hundreds hold Redis for 0.6 s)
    local hit = redis.call('ZREVRANGEBYLEX', KEYS[4], cursor, lo, 'LIMIT', L[1] - w[1], 1)
    if #hit == 0 then return at end
    local ts = parse_member(hit[1], #prefix)
    local e = ts + ms + wmargin(ms)
    if e > at then at = e end
    return at
  end
  local acc = {0, 0, 0, 0}
  while true do
    local batch = redis.call('ZREVRANGEBYLEX', KEYS[4], cursor, lo, 'LIMIT', 0, 64)
    if #batch == 0 then return at end
    for _, m in ipairs(batch) do
      local ts, ew = parse_member(m, #prefix)
      for u = 1, 4 do
        if L[u] > 0 and acc[u] + ew[u] + w[u] > L[u] then
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

-- nil when the key can never serve now (disabled/invalid), else the time it is usable from
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

-- exact earliest time this key can take w: at (>= now), why, headroom, and busy (every
-- concurrency slot is taken: `at` is only when to look again, not a moment room exists); or
-- -1 and a reason
local function key_fit(kid, spec, w, scale)
  local at, why = available_from(kid, spec)
  if at == nil then return -1, why, 0, false end
  local head = 1e18
  local busy = false
  for _, sc in ipairs(scopes(kid, spec)) do
    for _, lim in ipairs(sc[2]) do
      local prefix = sc[1] .. SEP .. lim[1] .. SEP
      local s = trim(prefix, lim[1], lim)
      local f = log_fit(prefix, lim[1], lim, s, w, scale)
      if f < 0 then return -1, 'request larger than a limit of ' .. sc[1], 0, false end
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
      if n >= sc[3] then
        busy = true
        if at < now + cpoll then at = now + cpoll end
      end
    end
  end
  return at, why, head, busy
end

-- keep a model's free index true for this key (earliest time it may take one request)
local UNIT = {1, 1, 1, 1}
local function rescore(kid, spec, fkey, picked)
  local at = key_fit(kid, spec, UNIT, 1)
  if at < 0 then
    redis.call('ZADD', fkey, 'XX', '+inf', kid)
  elseif picked or at > now then
    redis.call('ZADD', fkey, 'XX', at, kid)
  else
    redis.call('ZADD', fkey, 'XX', 'LT', at, kid)
  end
end

-- write reservation rid's entries (weights w) at time `at` in every log of the key and group
local function append(kid, spec, at, rid, w)
  local prefixes = {}
  for _, sc in ipairs(scopes(kid, spec)) do
    for _, lim in ipairs(sc[2]) do
      local prefix = sc[1] .. SEP .. lim[1] .. SEP
      local s = trim(prefix, lim[1], lim)
      redis.call('ZADD', KEYS[4], 0, prefix .. pad(at) .. SEP .. rid .. SEP .. wstr(w))
      for u = 1, 4 do s[u] = s[u] + w[u] end
      if at > s[5] then s[5] = at end
      bucket_added(s, at, w[1])
      write_sums(prefix, s)
      prefixes[#prefixes + 1] = prefix
    end
  end
  return prefixes
end

-- whether reservation rec (stamped rec.t, in the past, never sent) may move to now in
-- place. A window that holds the new stamp but not the old one ends at t' >= max(now,
-- rec.t + W') (W': the window with its margin), so it holds only entries stamped after
-- lower = max(rec.t, now - W'); their weights plus rec's must fit every limit. (The usual fit
-- instead waits until the newest entries leave, so a late claim would wait for every job
-- admitted after it, a lead's worth, in its worker thread.) Token limits are checked by a
-- walk of at most 256 entries; a longer one answers no.
local function moves_to_now(kid, spec, rec)
  for _, sc in ipairs(scopes(kid, spec)) do
    for _, lim in ipairs(sc[2]) do
      local ms = lim[1]
      local prefix = sc[1] .. SEP .. ms .. SEP
      trim(prefix, ms, lim)
      local lower = math.max(rec.t, now - ms - wmargin(ms))
      local lo = '(' .. prefix .. pad(lower) .. '\255'
      local hi = '(' .. prefix .. '\255'
      local tokens = lim[3] > 0 or lim[4] > 0 or lim[5] > 0
      local I, paced = bucket_of(lim, margin)
      local requests = lim[2]
      if paced then
        -- a bucket row's request count: the arrival time alone (its entries are out already)
        local s = read_sums(prefix)
        if bucket_fit(s, I, requests, rec.w[1], margin) > now then return false end
        requests = 0
      end
      if not tokens then
        if requests > 0 and redis.call('ZLEXCOUNT', KEYS[4], lo, hi) + rec.w[1] > requests then return false end
      else
        local acc = {rec.w[1], rec.w[2], rec.w[3], rec.w[4]}
        local batch = redis.call('ZRANGEBYLEX', KEYS[4], lo, hi, 'LIMIT', 0, 257)
        if #batch > 256 then return false end
        for _, m in ipairs(batch) do
          local _, ew = parse_member(m, #prefix)
          for u = 1, 4 do acc[u] = acc[u] + ew[u] end
        end
        for u = 1, 4 do
          if lim[u + 1] > 0 and acc[u] > lim[u + 1] and not (u == 1 and paced) then return false end
        end
      end
    end
  end
  return true
end

-- take a reservation's entries out of the logs (those still there)
local function remove_entries(rec, rid)
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

local function take_lease(kid, spec, rec, rid)
  local g = spec.g or ''
  local lm = kid .. SEP .. g .. SEP .. rid
  redis.call('ZADD', KEYS[8], now + spec.to + grace, lm)
  redis.call('HINCRBY', KEYS[9], 'k:' .. kid, 1)
  if g ~= '' then redis.call('HINCRBY', KEYS[9], 'g:' .. g, 1) end
  rec.lm = lm
end

local function drop_lease(rec)
  if rec.lm and redis.call('ZREM', KEYS[8], rec.lm) == 1 then
    if redis.call('HINCRBY', KEYS[9], 'k:' .. rec.k, -1) < 0 then redis.call('HSET', KEYS[9], 'k:' .. rec.k, 0) end
    if rec.g ~= '' and redis.call('HINCRBY', KEYS[9], 'g:' .. rec.g, -1) < 0 then
      redis.call('HSET', KEYS[9], 'g:' .. rec.g, 0)
    end
  end
  rec.lm = nil
end
