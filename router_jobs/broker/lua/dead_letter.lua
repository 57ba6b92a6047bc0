-- Move one delivered entry to the queue's dead-letter stream with its reason.
-- The XADD comes first: when Redis refuses it (out of memory) the entry stays pending.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's dead-letter stream
-- KEYS[3]  the queue's start counts (hash: entry id -> recorded starts)
-- ARGV[1]  consumer group name
-- ARGV[2]  stream entry id
-- ARGV[3]  encoded message
-- ARGV[4]  reason (text, never a secret)
-- ARGV[5]  approximate maximum length of the dead-letter stream
-- ARGV[6]  delivery count of the entry
-- ARGV[7]  starts of the entry (0 when not counted)
local t = redis.call('TIME')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[5]), '*',
  'm', ARGV[3], 'reason', ARGV[4], 'entry', ARGV[2], 'deliveries', ARGV[6], 'starts', ARGV[7],
  'at', t[1])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
