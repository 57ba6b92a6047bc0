-- Mark turn ARGV[1] of a conversation finished (succeeded, failed, cancelled, expired or
-- skipped) and advance the gate over every contiguous finished turn.
-- KEYS[1] turn seq counter   KEYS[2] turn gate hash   KEYS[3] turn finished set
-- ARGV[1] seq   ARGV[2] ttl seconds
-- Returns the gate position afterwards: every turn <= it has finished.
local seq = tonumber(ARGV[1])
local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
if seq > done then
  redis.call('SADD', KEYS[3], seq)
  local moved = false
  while redis.call('SISMEMBER', KEYS[3], done + 1) == 1 do
    redis.call('SREM', KEYS[3], done + 1)
    done = done + 1
    moved = true
  end
  if moved then
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('HSET', KEYS[2], 'done', done, 'since', now_ms)
    local running = tonumber(redis.call('HGET', KEYS[2], 'running') or '0')
    if running <= done then redis.call('HDEL', KEYS[2], 'running') end
  end
end
local ttl = tonumber(ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return done
