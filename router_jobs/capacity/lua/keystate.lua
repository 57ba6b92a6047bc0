-- keystate.lua: change one key's health state (operator action or provider verdict) and
-- move the key in the per-model free indexes accordingly. See router_jobs/keyhealth.py.
--
-- KEYS[1] state  hash  key_id -> state JSON {s, u (until epoch ms), r (reason), fp, at}
-- KEYS[2..] free zsets of every model the key serves
-- ARGV[1] op: disable | enable | cooldown | exhausted | full | invalid | clear | revalidate
-- ARGV[2] key_id
-- ARGV[3] cooldown: seconds; exhausted/full: until epoch ms; others: unused ('0')
-- ARGV[4] reason   ARGV[5] secret fingerprint (invalid, revalidate) or ''
-- Returns the key's state name after the change.

local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local op, kid, num, reason, fp = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]

local raw = redis.call('HGET', KEYS[1], kid)
local cur = raw and cjson.decode(raw) or nil
if cur and cur.u and cur.u <= now and (cur.s == 'cooldown' or cur.s == 'exhausted' or cur.s == 'full') then
  cur = nil
end
local cs = cur and cur.s or 'active'

local function set(st, score_op, score)
  st.at = now
  redis.call('HSET', KEYS[1], kid, cjson.encode(st))
  for i = 2, #KEYS do
    if score_op == '' then
      redis.call('ZADD', KEYS[i], 'XX', score, kid)
    else
      redis.call('ZADD', KEYS[i], 'XX', score_op, score, kid)
    end
  end
  return st.s
end

local function drop()
  redis.call('HDEL', KEYS[1], kid)
  for i = 2, #KEYS do redis.call('ZADD', KEYS[i], 'XX', 'LT', now, kid) end
  return 'active'
end

if op == 'disable' then
  return set({s = 'disabled', r = reason}, '', '+inf')
elseif op == 'enable' then
  if cs == 'disabled' or cs == 'active' then return drop() end
  return cs
elseif op == 'clear' then
  if cs == 'disabled' then return cs end
  return drop()
elseif op == 'invalid' then
  if cs == 'disabled' then return cs end
  return set({s = 'invalid', r = reason, fp = fp}, '', '+inf')
elseif op == 'revalidate' then
  if cs == 'invalid' and cur.fp ~= fp then return drop() end
  return cs
elseif op == 'cooldown' or op == 'exhausted' or op == 'full' then
  if cs == 'disabled' or cs == 'invalid' then return cs end
  local untilms = num
  if op == 'cooldown' then untilms = now + math.floor(num * 1000) end
  if untilms <= now then return cs end
  if cur and cur.u and cur.u >= untilms then return cs end
  return set({s = op, u = untilms, r = reason}, 'GT', untilms)
end
return redis.error_reply('unknown op ' .. op)
