-- Keep only the last N messages of a conversation; message_count follows the list length.
-- KEYS[1] messages list   KEYS[2] metadata hash
-- ARGV[1] keep_last_n (>= 0)   ARGV[2] ttl seconds
-- Returns the number of messages removed, or -1 when the conversation does not exist.
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local keep = tonumber(ARGV[1])
local before = redis.call('LLEN', KEYS[1])
if keep == 0 then
  redis.call('DEL', KEYS[1])
elseif before > keep then
  redis.call('LTRIM', KEYS[1], -keep, -1)
end
local after = redis.call('LLEN', KEYS[1])
local t = redis.call('TIME')
redis.call('HSETNX', KEYS[2], 'created_at', string.format('%d.%06d', tonumber(t[1]), tonumber(t[2])))
redis.call('HSET', KEYS[2], 'message_count', after,
  'updated_at', string.format('%d.%06d', tonumber(t[1]), tonumber(t[2])))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return before - after
