-- Move due messages from a queue's delay set into its stream, atomically, at most ARGV[1].
-- Any consumer may run it at any time: a message is moved exactly once.
-- KEYS[1]  delay sorted set of the queue
-- KEYS[2]  the queue's stream
-- ARGV[1]  the most messages to move in one call
-- Returns {moved, ms until the next due message or -1 when the set is empty}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, data in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', data)
  redis.call('ZREM', KEYS[1], data)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then
  wait = math.max(0, tonumber(nxt[2]) - now)
end
return {#due, wait}
