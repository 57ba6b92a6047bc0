-- Hand out the next turn number of a conversation (called at submit, in submission order).
-- KEYS[1] turn seq counter   KEYS[2] turn gate hash   KEYS[3] turn finished set
-- ARGV[1] ttl seconds
-- Returns the new turn number (1, 2, ...).
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq == 1 then
  -- a fresh (or expired and restarted) sequence: forget any stale gate state
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[2], 'done', 0)
end
local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
if seq == done + 1 then
  -- the new turn is the head: its stall clock starts now
  redis.call('HSET', KEYS[2], 'since', now_ms)
end
local ttl = tonumber(ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return seq
