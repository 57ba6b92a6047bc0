-- Take over entries that a dead (or stuck) consumer left pending longer than the visibility
-- timeout. An entry that was STARTED too often without an ack is returned apart, as poison:
-- it keeps killing the workers that run it. The caller ends its job and then dead-letters it
-- (dead_letter.lua); until then it stays pending under this consumer, so a crash in between
-- only means it is found again later. Starts are counted, not deliveries, so that messages
-- merely prefetched by a crashing worker are not blamed.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's start counts (hash: entry id -> recorded starts of redeliveries)
-- ARGV[1]  consumer group name
-- ARGV[2]  this consumer's name
-- ARGV[3]  minimum idle time in ms (the visibility timeout)
-- ARGV[4]  the most entries to take over
-- ARGV[5]  maximum starts before an entry is poison (the first delivery's start is not
--          recorded, so an entry is poison once it has 1 + recorded starts >= this number)
-- Returns {taken, poison}: taken is a flat list {id1, data1, id2, data2, ...} of entries now
-- owned by this consumer to run; poison is a flat list {id, data, starts, deliveries, ...}.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), '0-0',
  'COUNT', tonumber(ARGV[4]))
local out = {}
local poison = {}
local maxs = tonumber(ARGV[5])
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local fields = entry[2]
  if (not fields) or (type(fields) ~= 'table') or #fields == 0 then
    -- the entry was deleted from the stream while pending: just forget it
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[2], id)
  else
    local data = nil
    for i = 1, #fields, 2 do
      if fields[i] == 'm' then data = fields[i + 1] end
    end
    local starts = 1 + tonumber(redis.call('HGET', KEYS[2], id) or '0')
    if starts >= maxs then
      local info = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      local deliveries = 0
      if info[1] then deliveries = tonumber(info[1][4]) end
      table.insert(poison, id)
      table.insert(poison, data or '')
      table.insert(poison, tostring(starts))
      table.insert(poison, tostring(deliveries))
    elseif data then
      table.insert(out, id)
      table.insert(out, data)
    end
  end
end
if claimed[3] then
  for _, id in ipairs(claimed[3]) do
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return {out, poison}
