-- Hand prefetched but unprocessed entries back (graceful shutdown): each is re-added at the
-- end of the stream for any consumer and its old entry acknowledged, in one step.
-- The XADD comes before the XACK: when Redis refuses it (out of memory) the old entry stays
-- pending and is reclaimed later; nothing is lost.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's start counts (hash: entry id -> recorded starts), cleared for the ids
-- ARGV[1]  consumer group name
-- ARGV[2..] pairs of (entry id, encoded message)
local n = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #pending == 1 then
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[i + 1])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
end
return n
