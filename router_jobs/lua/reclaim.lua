-- Take over entries that a dead (or stuck) consumer left pending longer than the visibility
-- timeout. An entry that has been delivered more than the allowed number of times goes to
-- the dead-letter stream instead: it keeps killing the workers that take it.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's dead-letter stream
-- ARGV[1]  consumer group name
-- ARGV[2]  this consumer's name
-- ARGV[3]  minimum idle time in ms (the visibility timeout)
-- ARGV[4]  the most entries to take over
-- ARGV[5]  maximum deliveries before dead-lettering
-- ARGV[6]  approximate maximum length of the dead-letter stream
-- Returns a flat list {id1, data1, id2, data2, ...} of entries now owned by this consumer.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), '0-0',
  'COUNT', tonumber(ARGV[4]))
local out = {}
local maxd = tonumber(ARGV[5])
local t = redis.call('TIME')
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local fields = entry[2]
  if (not fields) or (type(fields) ~= 'table') or #fields == 0 then
    -- the entry was deleted from the stream while pending: just forget it
    redis.call('XACK', KEYS[1], ARGV[1], id)
  else
    local data = nil
    for i = 1, #fields, 2 do
      if fields[i] == 'm' then data = fields[i + 1] end
    end
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local deliveries = 0
    if info[1] then deliveries = tonumber(info[1][4]) end
    if deliveries > maxd then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[6]), '*',
        'm', data or '', 'reason', 'delivered ' .. deliveries .. ' times without an ack (worker crashed or timed out each time)',
        'entry', id, 'deliveries', tostring(deliveries), 'at', t[1])
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
    elseif data then
      table.insert(out, id)
      table.insert(out, data)
    end
  end
end
if claimed[3] then
  for _, id in ipairs(claimed[3]) do
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
end
return out
