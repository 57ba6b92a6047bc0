-- bucketlib.lua: token-bucket pacing of a window row's request count, for rows the provider
-- enforces as a bucket (row[6] == 1: a bucket of row[2] requests refilled in row[1] ms).
-- Included by windowlib (admit, claim, reserve) and by settle.lua; touches only the keys its
-- callers pass.
--
-- Such a row keeps, beside its log and sums, a theoretical arrival time T (ms; sums field 6)
-- and the row's refill interval I = row[1] / row[2] ms per request (field 7, so that settle,
-- which has no spec, can keep T true). T is the classic GCRA state: a request of weight w may
-- be stamped at t when max(T, t) + w*I - t <= tau, and then T = max(T, t) + w*I; tau is the
-- bucket's capacity in ms (row[2] * I, or a batch class's scaled share of it) less the
-- pool's margin, so stamps that conform to a bucket smaller by margin/I requests still
-- conform to the provider's bucket when each arrives up to the margin after its stamp.
-- (The whole margin, not the share of a short window a rolling log keeps: for a bucket it
-- costs only margin/I requests of the first burst.) A request sent later than that after
-- its stamp is moved to its real send (settle's 'sent'), which T then follows.
--
-- T is kept as an upper bound on the exact state of the live entries taken in stamp order,
-- which is what keeps every stamp conforming when entries are added out of order (admitted
-- ahead, claimed late) or taken out. Writing the exact state as a max over entries j of
-- t_j + I x (request weight of j and of every entry stamped after it):
-- * appending at t: max(T, t) + w*I bounds it whatever t is;
-- * taking out an entry stamped t0: the terms of entries up to t0 drop by w*I and later ones
--   are unchanged, so max(T - w*I, later terms) bounds it (later terms: a walk over the
--   entries stamped after t0, usually few; past 512 the rest are bounded by a count);
-- * moving an entry later (a request stamped again when it really left): the terms up to its
--   old stamp are unchanged, so max(T, the new terms after it) bounds it.

local BUCKET_WALK = 512

-- the max over the live entries of `prefix` stamped after t0 of ts + I x (request weight
-- from that entry to the newest); -1e18 when there are none. Past BUCKET_WALK entries the
-- ones not walked (stamped no later than the last one walked, each weighing at most one
-- request) are bounded by that stamp + I x the count of every entry after t0.
local function bucket_after(logkey, prefix, t0, I)
  local best = -1e18
  local rank = 0
  local seen = 0
  local lo = '(' .. prefix .. string.format('%015d', t0) .. '\255'
  local cursor = '(' .. prefix .. '\255'
  while true do
    local batch = redis.call('ZREVRANGEBYLEX', logkey, cursor, lo, 'LIMIT', 0, 128)
    local ts = nil
    for _, m in ipairs(batch) do
      ts = tonumber(string.sub(m, #prefix + 1, #prefix + 15))
      rank = rank + tonumber(string.match(m, '(%d+),%d+,%d+,%d+$'))
      local v = ts + rank * I
      if v > best then best = v end
    end
    seen = seen + #batch
    if #batch < 128 then return best end
    if seen >= BUCKET_WALK then
      local all = redis.call('ZLEXCOUNT', logkey, lo, '(' .. prefix .. '\255')
      local v = ts + all * I
      if v > best then best = v end
      return best
    end
    cursor = '(' .. batch[#batch]
  end
end

-- T after taking out an entry of request weight w1 stamped t0 (s: the row's sums)
local function bucket_taken_out(logkey, prefix, s, t0, w1)
  if not s[7] or s[7] <= 0 or w1 == 0 then return end
  local later = bucket_after(logkey, prefix, t0, s[7])
  local t = s[6] - w1 * s[7]
  if later > t then t = later end
  s[6] = t
end

-- T after an entry stamped t0 moved to a later stamp (already in the log there)
local function bucket_moved_later(logkey, prefix, s, t0, w1)
  if not s[7] or s[7] <= 0 or w1 == 0 then return end
  local later = bucket_after(logkey, prefix, t0, s[7])
  if later > s[6] then s[6] = later end
end

-- T after a new entry of request weight w1 stamped t (any order)
local function bucket_added(s, t, w1)
  if not s[7] then return end
  local base = s[6] or 0
  if t > base then base = t end
  s[6] = base + w1 * s[7]
end

-- a row's sums "r t i o last[ T I]" as numbers, and back
local function bucket_sums(raw)
  local s = {0, 0, 0, 0, 0}
  if raw then
    local i = 1
    for v in string.gmatch(raw, '%S+') do s[i] = tonumber(v); i = i + 1 end
  end
  return s
end

-- (T and I rounded up: a bound stays a bound)
local function bucket_sums_text(s)
  local text = s[1] .. ' ' .. s[2] .. ' ' .. s[3] .. ' ' .. s[4] .. ' ' .. s[5]
  if s[7] then
    text = text .. ' ' .. string.format('%.3f %.6f', math.ceil((s[6] or 0) * 1000) / 1000,
                                        math.ceil(s[7] * 1e6) / 1e6)
  end
  return text
end

-- for a bucket row: its refill interval I (ms per request), and whether the bucket is large
-- enough to pace as one with the pool's margin m (a capacity that the margin would leave
-- under one request is paced as a rolling window of capacity per refill time instead,
-- which a bucket always accepts)
local function bucket_of(lim, m)
  if lim[6] ~= 1 or lim[2] <= 0 then return nil end
  local I = lim[1] / lim[2]
  return I, (lim[2] - 1) * I >= m
end

-- earliest moment (ms; in the past when it fits now) a request of weight w1 fits a paced
-- bucket row whose capacity for this request class is L requests (m: the pool's margin)
local function bucket_fit(s, I, L, w1, m)
  return (s[6] or 0) + w1 * I - math.max(L * I - m, w1 * I)
end

-- the share of the row's capacity l left after w1 more requests now (to rank keys)
local function bucket_headroom(s, I, l, w1, now)
  return (l - math.max(0, (s[6] or 0) - now) / I - w1) / l
end

-- make a row's T true for its spec before it is used (s: its sums, trimmed; now: server
-- time); true when s changed. A row that was not a bucket row (a keys file that named
-- another model, or an older version) has entries T never saw: its bucket is taken as empty
-- at its newest stamp. A refill interval that changed rescales the time T is ahead of now.
-- A row that is no longer a bucket row forgets T, so that a later change back starts again.
local function bucket_prepare(s, lim, now)
  local I = bucket_of(lim, 0)
  if not I then
    if s[7] then s[6] = nil; s[7] = nil; return true end
    return false
  end
  if not s[7] then
    s[6] = (s[1] > 0) and (math.max(now, s[5]) + lim[2] * I) or 0
    s[7] = I
    return true
  end
  if math.abs(s[7] - I) > 1e-6 then
    s[6] = now + math.max(0, (s[6] or 0) - now) * I / s[7]
    s[7] = I
    return true
  end
  return false
end
