-- Acknowledge a delivered entry and park its message for later, in one step, so that a job
-- sent back for backpressure is never lost nor duplicated by a crash in between.
-- The ZADD comes first: when Redis refuses it (out of memory) nothing has changed and the
-- entry stays pending, to be delivered again.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's delay sorted set
-- ARGV[1]  consumer group name
-- ARGV[2]  stream entry id being acknowledged
-- ARGV[3]  delay in milliseconds
-- ARGV[4]  encoded message to run later
-- Returns the due time in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return due
