-- Park a message in a queue's delay set until server time + delay.
-- KEYS[1]  delay sorted set of the queue (score = due time in ms, server clock)
-- ARGV[1]  delay in milliseconds (>= 0)
-- ARGV[2]  encoded message (unique per enqueue: it carries its own redis_message_id)
-- Returns the due time in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
