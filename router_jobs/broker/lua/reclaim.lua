-- Take over entries that a dead (or stuck) consumer left pending longer than the visibility
-- timeout. An entry that was STARTED too often without an ack goes to the dead-letter
-- stream instead: it keeps killing the workers that run it. Starts are counted, not
-- deliveries, so that messages merely prefetched by a crashing worker are not blamed.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's dead-letter stream
-- KEYS[3]  the queue's start counts (hash: entry id -> recorded starts of redeliveries)
-- ARGV[1]  consumer group name
-- ARGV[2]  this consumer's name
-- ARGV[3]  minimum idle time in ms (the visibility timeout)
-- ARGV[4]  the most entries to take over
-- ARGV[5]  maximum starts before dead-lettering (the first delivery's start is not recorded,
--          so an entry is dead-lettered once it has 1 + recorded starts >= this number)
-- ARGV[6]  approximate maximum length of the dead-letter stream
-- Returns a flat list {id1, data1, id2, data2, ...} of entries now owned by this consumer.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), '0-0',
  'COUNT', tonumber(ARGV[4]))
local out = {}
local maxs = tonumber(ARGV[5])
local t = redis.call('TIME')
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local fields = entry[2]
  if (not fields) or (type(fields) ~= 'table') or #fields == 0 then
    -- the entry was deleted from the stream while pending: just forget it
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[3], id)
  else
    local data = nil
    for i = 1, #fields, 2 do
      if fields[i] == 'm' then data = fields[i + 1] end
    end
    local starts = 1 + tonumber(redis.call('HGET', KEYS[3], id) or '0')
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local deliveries = 0
    if info[1] then deliveries = tonumber(info[1][4]) end
    if starts >= maxs then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[6]), '*',
        'm', data or '', 'reason', 'started ' .. starts .. ' times without an ack (its worker crashed or timed out each time)',
        'entry', id, 'deliveries', tostring(deliveries), 'starts', tostring(starts), 'at', t[1])
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[3], id)
    elseif data then
      table.insert(out, id)
      table.insert(out, data)
    end
  end
end
if claimed[3] then
  for _, id in ipairs(claimed[3]) do
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
