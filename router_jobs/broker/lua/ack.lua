-- Acknowledge delivered entries and delete them from the stream, in one step.
-- A script rather than MULTI/EXEC: XACK and XDEL free memory, so Redis runs them even when it
-- is out of memory under noeviction, whereas it refuses a whole MULTI block in that state.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's start counts (hash: entry id -> recorded starts), cleared for the ids
-- ARGV[1]  consumer group name
-- ARGV[2..] stream entry ids
-- Returns the number of entries that were still pending.
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = 0
for i = 1, #ids, 500 do
  local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
  n = n + redis.call('XACK', KEYS[1], ARGV[1], unpack(chunk))
  redis.call('XDEL', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
return n
