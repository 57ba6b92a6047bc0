-- claim.lua: a worker takes up the admission of a job it was delivered. The reservation was
-- stamped at admission with the moment its room exists (now, or up to `lead` ms ahead). A
-- worker that comes before that moment keeps the stamp and starts the call at it; one that
-- comes later is stamped again: now, if moving its entries there keeps every window of the
-- key within its limits (poollib's moves_to_now), else the moment it can start (within
-- `lead` if the key's room has moved on), so the gap between our stamp and the provider's
-- arrival is the call's own set-up time. A key with no room within `lead` sends the job
-- back to its line.
--
-- KEYS[1..10]  spec, gspec, state, log, sums, res, rexp, lease, inflight, stats (as reserve.lua)
-- KEYS[11] grants  hash  job id -> reservation id ('!'..reason: refused for good); kept
--                        after the claim until the reservation is settled (a redelivery
--                        after a worker died runs on the same reservation)
-- KEYS[12..] free zsets of the pool's models (a key whose room came back is looked at again)
-- ARGV[1] job id   ARGV[2] margin ms   ARGV[3] lease grace ms   ARGV[4] record keep ms
-- ARGV[5] concurrency poll ms   ARGV[6] lead ms
-- Returns {'n'} no admission | {'x', reason} refused | {'l', reason} no room any more |
--         {'g', key_id, model, reservation id, stamp ms, now ms} (start the call at the stamp)

local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local id = ARGV[1]
local margin, grace, keep, cpoll = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lead = tonumber(ARGV[6] or '0')

--@include poollib

local rid_of_rec = ''
local function lost(rec, why)
  redis.call('HDEL', KEYS[11], id)
  rec.s = 'd'
  redis.call('HSET', KEYS[6], rid_of_rec, cjson.encode(rec))
  for i = 12, #KEYS do redis.call('ZADD', KEYS[i], 'XX', 'LT', now, rec.k) end
  return {'l', why}
end

local rid = redis.call('HGET', KEYS[11], id)
if not rid then return {'n'} end
if string.sub(rid, 1, 1) == '!' then
  redis.call('HDEL', KEYS[11], id)
  return {'x', string.sub(rid, 2)}
end
local raw = redis.call('HGET', KEYS[6], rid)
if not raw then
  redis.call('HDEL', KEYS[11], id)
  return {'n'}
end
local rec = cjson.decode(raw)
rid_of_rec = rid
-- claimed before and not settled: a redelivery after its worker died keeps its reservation
if rec.s == 'g' then return {'g', rec.k, rec.m, rid, tostring(rec.t), tostring(now)} end
if rec.s ~= 'a' then
  redis.call('HDEL', KEYS[11], id)
  return {'n'}
end
local spec_raw = redis.call('HGET', KEYS[1], rec.k)
if not spec_raw then
  remove_entries(rec, rid)
  drop_lease(rec)
  return lost(rec, 'key ' .. rec.k .. ' was removed')
end
local spec = cjson.decode(spec_raw)
if rec.t >= now then
  -- on time: the admission's stamp stands (unless the key left rotation or cooled down
  -- since); the call starts at it
  local from = available_from(rec.k, spec)
  if from ~= nil and from <= rec.t then
    rec.s = 'g'
    redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
    return {'g', rec.k, rec.m, rid, tostring(rec.t), tostring(now)}
  end
end
remove_entries(rec, rid)
local from = available_from(rec.k, spec)
-- late, and the key usable now: the entries move to now in place when every window still
-- fits (the concurrency slot held since admission stays this job's)
local in_place = from ~= nil and from <= now and rec.t < now and rec.lm
    and redis.call('ZSCORE', KEYS[8], rec.lm) and moves_to_now(rec.k, spec, rec)
drop_lease(rec)
local at = now
if not in_place then
  local why, head, busy
  at, why, head, busy = key_fit(rec.k, spec, rec.w, 1)
  if at < 0 or busy or at > now + lead then return lost(rec, 'key ' .. rec.k .. ' has no room at call time') end
end
rec.p = append(rec.k, spec, at, rid, rec.w)
rec.t = at
take_lease(rec.k, spec, rec, rid)
rec.s = 'g'
redis.call('HSET', KEYS[6], rid, cjson.encode(rec))
redis.call('ZADD', KEYS[7], at + spec.to + grace + keep, rid)
return {'g', rec.k, rec.m, rid, tostring(rec.t), tostring(now)}
