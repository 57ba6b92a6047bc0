-- Move dead-lettered entries back onto their queue: each entry's message is added to the
-- queue's stream as a fresh entry and removed from the dead-letter stream, in one step.
-- KEYS[1]  the queue's dead-letter stream
-- KEYS[2]  the queue's stream
-- ARGV     dead-letter entry ids to replay
-- Returns the number of entries replayed (ids not found, or without a message, are skipped).
local n = 0
for i = 1, #ARGV do
  local rows = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #rows == 1 then
    local fields = rows[1][2]
    local data = nil
    for j = 1, #fields, 2 do
      if fields[j] == 'm' then data = fields[j + 1] end
    end
    if data then
      redis.call('XADD', KEYS[2], '*', 'm', data)
      redis.call('XDEL', KEYS[1], ARGV[i])
      n = n + 1
    end
  end
end
return n
