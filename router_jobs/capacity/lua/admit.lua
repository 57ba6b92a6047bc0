-- admit.lua: the pool's wait lines. Puts jobs in line ('enqueue'), takes jobs out ('remove'),
-- and admits heads of line while a key has room ('admit', 'force', and after every other op):
-- an admitted job gets a reservation stamped now (server TIME) and its message is XADDed to
-- its queue stream, so a waiting job is delivered once, when it can run. See
-- router_jobs/capacity/scheduler.py.
--
-- KEYS[1..10]  spec, gspec, state, log, sums, res, rexp, lease, inflight, stats (as reserve.lua)
-- KEYS[11] demand  hash  job id -> demand JSON {id,q,c,f,wt,l,m,mw,ni,no,o,x,dl,msg,at,mem}
-- KEYS[12] fair    hash  fairness key -> last virtual finish tag; '\31V' -> virtual clock
-- KEYS[13] grants  hash  job id -> reservation id of its admission ('!'..reason: refused)
-- KEYS[14] meta    hash  'due' next admission ms, 'seq', 'ia' last interactive arrival ms,
--                        'is' when interactive arrivals began (after a pause of 30 holds),
--                        'di' decayed count of interactive arrivals as of 'dt' ms,
--                        'il' ms until which an interactive client said it serves (announce.lua)
-- KEYS[15] stream of the 'interactive' queue     KEYS[16] stream of the 'batch' queue
-- KEYS[17..] per pool model, in ARGV order: free zset, line zset (lex members
--            "<class>\31<tag 15 digits>\31<seq 12 digits>\31<job id>")
-- KEYS[17+2M] joining zset: held jobs whose producer has not put them in line yet
-- ARGV[1] op: 'admit' (only when due), 'force', 'enqueue', 'remove', 'settled'
-- ARGV[2] margin ms   ARGV[3] lease grace ms   ARGV[4] record keep ms   ARGV[5] concurrency poll ms
-- ARGV[6] most of each key held for interactive work while interactive jobs arrive (0..1)
-- ARGV[7] how long (ms) after the last interactive arrival a share stays held
-- ARGV[8] most admissions in this call
-- ARGV[9] lead ms: a job may be admitted this long before its room exists; its reservation is
--         stamped at that future moment and the worker starts the call then (see claim.lua)
-- ARGV[10] least of each key held while interactive jobs arrive (the share adapts in between)
-- ARGV[11] standing reserve: 'auto' (the least stays held within 30 holds of an interactive
--          arrival, or while an interactive client announces itself), 'always' (held from the
--          start), 'off' (held only within a hold)
-- ARGV[12] the pool's request capacity per second (0: unknown; then the most is held)
-- ARGV[13] number of models M   ARGV[14..13+M] models
-- ARGV[14+M..] enqueue: '1' to go to the head of the line, then demand JSONs; remove: job ids;
--              settled: job ids whose reservation was settled (their grant is forgotten)
-- Returns {admitted, ms until the next admission may succeed (-1: lines empty), jobs in line}.

local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local op = ARGV[1]
local margin, grace, keep, cpoll = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local share, hold, most = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lead = tonumber(ARGV[9])
local share_min = tonumber(ARGV[10])
local reserve, capacity = ARGV[11], tonumber(ARGV[12])
local M = tonumber(ARGV[13])

--@include poollib

local lane_of = {}
local lanes = {}
for i = 1, M do
  local model = ARGV[13 + i]
  lanes[i] = {model = model, free = KEYS[16 + 2 * i - 1], line = KEYS[16 + 2 * i]}
  lane_of[model] = lanes[i]
end

local function line_len()
  local n = 0
  for _, ln in ipairs(lanes) do n = n + redis.call('ZCARD', ln.line) end
  return n
end

local function job_of(mem) return string.match(mem, '([^\31]+)$') end

sweep()

-- Interactive demand: a decayed count of interactive arrivals (half-life hold / 4) since its
-- episode began ('is': the first arrival after none for 30 holds); a job put back at the head
-- of the line (after a 429, a late claim) is not a new arrival.
local HL = math.max(1, hold / 4)
local function note_interactive(arrival)
  local f = redis.call('HMGET', KEYS[14], 'ia', 'di', 'dt')
  local last = tonumber(f[1] or '0')
  if last == 0 or now - last >= 30 * hold then
    redis.call('HSET', KEYS[14], 'is', now, 'di', arrival and 1 or 0, 'dt', now)
  elseif arrival then
    local dec = 2 ^ (-math.max(0, now - tonumber(f[3] or now)) / HL)
    redis.call('HSET', KEYS[14], 'di', tonumber(f[2] or '0') * dec + 1, 'dt', now)
  end
  redis.call('HSET', KEYS[14], 'ia', now)
end

-- ---------------------------------------------------------------- enqueue / remove
-- a grant whose reservation is settled (or gone) is forgotten
-- (returns its record, or true when the record is gone)
local function forget_settled(id)
  local rid = redis.call('HGET', KEYS[13], id)
  if not rid or string.sub(rid, 1, 1) == '!' then return nil end
  local raw = redis.call('HGET', KEYS[6], rid)
  local rec = raw and cjson.decode(raw)
  if not rec or rec.s == 'd' then
    redis.call('HDEL', KEYS[13], id)
    return rec or true
  end
  return nil
end

-- can a settled reservation have freed room before the time the last step found? A released
-- concurrency lease or refunded tokens can; a request-count window keeps the request counted
local function frees_early(rec)
  if rec == true then return true end
  local raw = redis.call('HGET', KEYS[1], rec.k)
  if not raw then return false end
  for _, sc in ipairs(scopes(rec.k, cjson.decode(raw))) do
    if sc[3] and sc[3] > 0 then return true end
    for _, lim in ipairs(sc[2]) do
      if lim[3] > 0 or lim[4] > 0 or lim[5] > 0 then return true end
    end
  end
  return false
end

if op == 'settled' then
  -- a full admission step only when the settle may have freed room early; otherwise the
  -- step runs when due (a step per settled call walked the lines hundreds of times a second)
  local early = false
  for i = 14 + M, #ARGV do
    local rec = forget_settled(ARGV[i])
    if rec and not early then early = frees_early(rec) end
  end
  op = early and 'force' or 'admit'
elseif op == 'enqueue' then
  local head = ARGV[14 + M] == '1'
  for i = 15 + M, #ARGV do
    local d = cjson.decode(ARGV[i])
    forget_settled(d.id)
    if KEYS[17 + 2 * M] then redis.call('ZREM', KEYS[17 + 2 * M], d.id) end
    local ln = lane_of[d.l]
    if not ln and redis.call('HEXISTS', KEYS[13], d.id) == 0 then
      -- no key of the pool serves the job's model: hand it over to fail with the reason
      redis.call('HSET', KEYS[13], d.id, '!no key serves ' .. d.l)
      redis.call('XADD', (d.q == 'interactive') and KEYS[15] or KEYS[16], '*', 'm', d.msg)
    elseif ln and redis.call('HEXISTS', KEYS[11], d.id) == 0 and redis.call('HEXISTS', KEYS[13], d.id) == 0 then
      local tag
      if d.c == 0 then
        note_interactive(not head)
        tag = head and 0 or now
      else
        local V = tonumber(redis.call('HGET', KEYS[12], SEP .. 'V') or '0')
        if head then
          tag = V
        else
          local last = tonumber(redis.call('HGET', KEYS[12], d.f) or '0')
          local start = math.max(V, last)
          tag = start + math.max(1, math.floor(1000000 / (d.wt or 1)))
          redis.call('HSET', KEYS[12], d.f, tag)
        end
      end
      local seq = redis.call('HINCRBY', KEYS[14], 'seq', 1)
      d.mem = d.c .. SEP .. pad(tag) .. SEP .. string.format('%012d', seq) .. SEP .. d.id
      d.tag = tag
      if not d.at then d.at = now end
      redis.call('HSET', KEYS[11], d.id, cjson.encode(d))
      redis.call('ZADD', ln.line, 0, d.mem)
    end
  end
  op = 'force'
elseif op == 'remove' then
  for i = 14 + M, #ARGV do
    local id = ARGV[i]
    local raw = redis.call('HGET', KEYS[11], id)
    if raw then
      local d = cjson.decode(raw)
      local ln = lane_of[d.l]
      if ln then redis.call('ZREM', ln.line, d.mem) end
      redis.call('HDEL', KEYS[11], id)
    end
    -- admitted but not yet claimed: the request never left; give its room back entirely
    local rid = redis.call('HGET', KEYS[13], id)
    if rid then
      redis.call('HDEL', KEYS[13], id)
      local rraw = redis.call('HGET', KEYS[6], rid)
      if rraw then
        local rec = cjson.decode(rraw)
        if rec.s == 'a' then
          remove_entries(rec, rid)
          drop_lease(rec)
          rec.s = 'd'
          redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
          -- the key may have room again: let admission look at it (it rechecks exactly)
          for _, ln in ipairs(lanes) do redis.call('ZADD', ln.free, 'XX', 'LT', now, rec.k) end
        end
      end
    end
  end
  op = 'force'
end

-- ---------------------------------------------------------------- admission
if op == 'admit' then
  local due = tonumber(redis.call('HGET', KEYS[14], 'due') or '0')
  if due > now then return {0, due - now, -1} end
end

-- Interactive isolation, adaptive: while an interactive job arrived within `hold`, batch work
-- sees every limit shrunk by the held share clamp(2 x r / C, share_min, share), r the recent
-- interactive arrival rate (the decayed count over its expected value for a steady rate of
-- 1/s over the episode so far, so a young episode is not underestimated), C the pool's
-- request capacity per second. Between bursts the standing reserve (share_min) stays held as
-- `reserve` says. Scheduler.held_share computes the same from the same fields.
local ia = tonumber(redis.call('HGET', KEYS[14], 'ia') or '0')
local function held_now()
  if capacity <= 0 then return share end
  local f = redis.call('HMGET', KEYS[14], 'is', 'di', 'dt')
  local di = tonumber(f[2] or '0') * 2 ^ (-math.max(0, now - tonumber(f[3] or now)) / HL)
  local span = math.max(1000, now - tonumber(f[1] or now))
  local rate = di / ((HL / 1000) / math.log(2) * (1 - 2 ^ (-span / HL)))
  return math.min(share, math.max(share_min, 2 * rate / capacity))
end
local batch_scale = 1
if share > 0 then
  if ia > 0 and now - ia < hold then
    batch_scale = 1 - held_now()
  elseif reserve == 'always' or (reserve == 'auto' and ((ia > 0 and now - ia < 30 * hold)
      or tonumber(redis.call('HGET', KEYS[14], 'il') or '0') > now)) then
    -- no interactive job lately (or none yet, but an interactive client is serving): the least
    -- stays held, so that the next one finds room at once instead of waiting for a batch's
    -- window to slide
    batch_scale = 1 - share_min
  end
end

local SCAN = 64
local CHOICE = 4

local function metric(objective, c, d)
  if objective == 'cost' then
    return (d.ni * c.spec.ci + d.no * c.spec.co)
  elseif objective == 'reliability' then
    return tonumber(redis.call('HGET', KEYS[10], c.kid .. SEP .. 'ee') or '0')
  elseif objective == 'latency' then
    return tonumber(redis.call('HGET', KEYS[10], c.kid .. SEP .. 'le') or '0')
  end
  return -(c.head * c.spec.wt)
end

-- the best key of `model` with room for demand d by now + lead: 'g', pick (pick.at: the
-- moment its room exists, >= now) | 'w', at | 'n', reasons. Keys with room now come first,
-- then the earliest; among equals the objective's metric decides.
local function choose(d, ln, W, scale, excluded)
  local grantable, best_at, could, reasons = {}, nil, false, {}
  local horizon = now + lead
  local cands = redis.call('ZRANGEBYSCORE', ln.free, '-inf', '(inf', 'WITHSCORES', 'LIMIT', 0, SCAN)
  for j = 1, #cands / 2 do
    local kid, sc = cands[2 * j - 1], tonumber(cands[2 * j])
    if sc > horizon then
      could = true
      if best_at == nil or sc < best_at then best_at = sc end
      break
    end
    if excluded[kid] then
      reasons[#reasons + 1] = kid .. ': excluded'
    else
      local raw = redis.call('HGET', KEYS[1], kid)
      if not raw then
        redis.call('ZREM', ln.free, kid)
      else
        local spec = cjson.decode(raw)
        local at, why, head, busy = key_fit(kid, spec, W, scale)
        if at < 0 then
          reasons[#reasons + 1] = kid .. ': ' .. why
        else
          could = true
          -- a key whose concurrency slots are all taken is not admitted ahead: no one knows
          -- when a call ends
          if at <= horizon and not busy then
            grantable[#grantable + 1] = {kid = kid, spec = spec, head = head, at = math.max(at, now)}
          else
            -- (a busy key is looked at again at `at`, not `lead` before it: a settle that
            -- releases a slot runs a step at once anyway)
            if busy then at = at + lead end
            if best_at == nil or at < best_at then best_at = at end
          end
        end
        if not (at >= 0 and at <= now) then rescore(kid, spec, ln.free, false) end
      end
    end
    if #grantable >= CHOICE then break end
  end
  if #grantable > 0 then
    local pick, pm = nil, nil
    for _, c in ipairs(grantable) do
      local m = metric(d.o, c, d)
      if pick == nil or c.at < pick.at or (c.at == pick.at and m < pm) then pick, pm = c, m end
    end
    return 'g', pick
  end
  if could then return 'w', best_at or (now + 1000) end
  if #cands >= 2 * SCAN then return 'w', now + 1000 end
  local dead = redis.call('ZRANGEBYSCORE', ln.free, '+inf', '+inf', 'LIMIT', 0, 3)
  for _, kid in ipairs(dead) do
    local st = redis.call('HGET', KEYS[3], kid)
    local why = 'out of rotation'
    if st then
      st = cjson.decode(st)
      why = st.s .. ((st.r and st.r ~= '') and (' (' .. st.r .. ')') or '')
    end
    reasons[#reasons + 1] = kid .. ': ' .. why
  end
  return 'n', reasons
end

local function dispatch(d, ln)
  redis.call('ZREM', ln.line, d.mem)
  redis.call('HDEL', KEYS[11], d.id)
  local stream = (d.q == 'interactive') and KEYS[15] or KEYS[16]
  redis.call('XADD', stream, '*', 'm', d.msg)
  if d.c ~= 0 then
    -- the virtual clock follows the admitted tags; a fairness key with nothing left waiting is forgotten
    local V = tonumber(redis.call('HGET', KEYS[12], SEP .. 'V') or '0')
    if d.tag and d.tag > V then redis.call('HSET', KEYS[12], SEP .. 'V', d.tag) end
    if d.f and tonumber(redis.call('HGET', KEYS[12], d.f) or '-1') == d.tag then redis.call('HDEL', KEYS[12], d.f) end
  end
end

-- try to admit demand d; returns 'g' (admitted), 'w', at (no room before at) or 'n' (handed over refused)
local function try_admit(d, ln)
  local models = d.m
  if d.mw >= 0 and now - d.at < d.mw then models = {d.m[1]} end
  local W = {1, d.ni + d.no, d.ni, d.no}
  local excluded = {}
  for _, k in ipairs(d.x or {}) do excluded[k] = true end
  local scale = (d.c == 0) and 1 or batch_scale
  local wait_at, never = nil, {}
  for _, model in ipairs(models) do
    local mln = lane_of[model]
    if mln then
      local kind, r = choose(d, mln, W, scale, excluded)
      if kind == 'g' then
        local rid = d.id .. ':' .. redis.call('HINCRBY', KEYS[14], 'rseq', 1)
        -- stamped when its room exists (now, or up to `lead` ms ahead: the worker waits for it)
        local rec = {k = r.kid, g = r.spec.g or '', m = model, t = r.at, w = W, s = 'a'}
        rec.p = append(r.kid, r.spec, r.at, rid, W)
        take_lease(r.kid, r.spec, rec, rid)
        redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
        redis.call('ZADD', KEYS[7], r.at + r.spec.to + grace + keep, rid)
        rescore(r.kid, r.spec, mln.free, true)
        redis.call('HSET', KEYS[13], d.id, rid)
        dispatch(d, ln)
        return 'g'
      elseif kind == 'w' then
        if wait_at == nil or r < wait_at then wait_at = r end
      else
        for _, x in ipairs(r) do never[#never + 1] = x end
      end
    end
  end
  if wait_at then return 'w', wait_at end
  local why = 'no key serves ' .. table.concat(models, ', ')
  if #never > 0 then why = why .. ' (' .. table.concat(never, '; ', 1, math.min(#never, 8)) .. ')' end
  redis.call('HSET', KEYS[13], d.id, '!' .. why)
  dispatch(d, ln)
  return 'n'
end

local admitted, next_at = 0, nil
local blocked = {}
local cut = false
for class = 0, 1 do
  for _, ln in ipairs(lanes) do
    local cursor = '[' .. class .. SEP
    local hi = '(' .. (class + 1) .. SEP
    local skipped = 0
    while not cut and skipped <= 16 do
      local batch = redis.call('ZRANGEBYLEX', ln.line, cursor, hi, 'LIMIT', 0, 32)
      if #batch == 0 then break end
      for _, mem in ipairs(batch) do
        local raw = redis.call('HGET', KEYS[11], job_of(mem))
        if not raw then
          redis.call('ZREM', ln.line, mem)
        else
          local d = cjson.decode(raw)
          local sig = table.concat(d.m, SEP) .. SEP .. d.mw
          if blocked['0' .. sig] or blocked[class .. sig] then
            skipped = skipped + 1
          elseif d.dl >= 0 and now > d.dl then
            dispatch(d, ln)  -- past its deadline: the worker ends it as expired
          else
            local kind, at = try_admit(d, ln)
            if kind == 'g' then
              admitted = admitted + 1
              if admitted >= most then cut = true; next_at = now end
            elseif kind == 'w' then
              blocked[class .. sig] = true
              skipped = skipped + 1
              if next_at == nil or at < next_at then next_at = at end
            end
          end
        end
        if cut or skipped > 16 then break end
      end
      cursor = '(' .. batch[#batch]
    end
  end
end

local n = line_len()
if n == 0 then
  redis.call('HSET', KEYS[14], 'due', 0)
  return {admitted, -1, 0}
end
if next_at == nil then next_at = now + 50 end
-- the next step is due `lead` ms before the room it waits for
next_at = math.max(now, next_at - lead)
redis.call('HSET', KEYS[14], 'due', next_at)
return {admitted, next_at - now, n}
