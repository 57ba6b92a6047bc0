-- Hand prefetched but unprocessed entries back (graceful shutdown): each is re-added at the
-- end of the stream for any consumer and its old entry acknowledged, in one step.
-- KEYS[1]  the queue's stream
-- ARGV[1]  consumer group name
-- ARGV[2..] pairs of (entry id, encoded message)
local n = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    redis.call('XDEL', KEYS[1], id)
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[i + 1])
    n = n + 1
  end
end
return n
