-- May turn ARGV[1] of a conversation run now? It may when every earlier turn has finished.
-- KEYS[1] turn seq counter   KEYS[2] turn gate hash   KEYS[3] turn finished set
-- ARGV[1] seq   ARGV[2] ttl seconds   ARGV[3] stall ms (0: never skip a silent head turn)
-- Returns 0 when due (and records it as running), n > 0 = turns still ahead of it,
-- -1 when this turn already finished or was skipped (do not run it).
local seq = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local stall_ms = tonumber(ARGV[3])
local function refresh()
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
local issued = tonumber(redis.call('GET', KEYS[1]) or '0')
if issued < seq then
  -- the sequence expired (or was never issued): there is nothing left to wait for
  return 0
end
local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
if seq <= done or redis.call('SISMEMBER', KEYS[3], seq) == 1 then
  refresh()
  return -1
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq == done + 1 then
  -- the head turn checking in also counts as a heartbeat for the stall clock
  redis.call('HSET', KEYS[2], 'running', seq, 'since', now_ms)
  refresh()
  return 0
end
if stall_ms > 0 then
  local since = tonumber(redis.call('HGET', KEYS[2], 'since') or now_ms)
  if now_ms - since >= stall_ms then
    -- the head turn neither ran nor finished for stall_ms: mark it skipped and advance
    done = done + 1
    while redis.call('SISMEMBER', KEYS[3], done + 1) == 1 do
      redis.call('SREM', KEYS[3], done + 1)
      done = done + 1
    end
    redis.call('HSET', KEYS[2], 'done', done, 'since', now_ms)
    redis.call('HINCRBY', KEYS[2], 'skipped', 1)
    redis.call('HDEL', KEYS[2], 'running')
    if seq == done + 1 then
      redis.call('HSET', KEYS[2], 'running', seq)
      refresh()
      return 0
    end
  end
end
refresh()
return seq - done - 1
