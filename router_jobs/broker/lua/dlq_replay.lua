-- Move dead-lettered entries back onto their queue: each entry's (re-encoded) message is added
-- to the queue's stream as a fresh entry and the entry removed from the dead-letter stream, in
-- one step. An id no longer in the dead-letter stream is skipped (replayed or purged already).
-- KEYS[1]  the queue's dead-letter stream
-- KEYS[2]  the queue's stream
-- ARGV     pairs of (dead-letter entry id, encoded message to enqueue)
-- Returns the number of entries replayed.
local n = 0
for i = 1, #ARGV, 2 do
  local rows = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #rows == 1 then
    redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
