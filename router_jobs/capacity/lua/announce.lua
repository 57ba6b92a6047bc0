-- announce.lua: an interactive client (a gateway, a chat service) says it is serving, so that
-- under the 'auto' standing reserve the least interactive share is held before its first job
-- arrives. Sets the scheduler meta hash's 'il' to server time + ARGV[1] ms (never earlier
-- than it was); ARGV[1] = 0 withdraws the announcement.
-- KEYS[1] meta hash (admit.lua's KEYS[14])
-- Returns the 'il' now in force (ms).
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local ttl = tonumber(ARGV[1])
if ttl <= 0 then
  redis.call('HDEL', KEYS[1], 'il')
  return 0
end
local il = math.max(tonumber(redis.call('HGET', KEYS[1], 'il') or '0'), now + ttl)
redis.call('HSET', KEYS[1], 'il', il)
return il
