-- Move one delivered entry to the queue's dead-letter stream with its reason.
-- KEYS[1]  the queue's stream
-- KEYS[2]  the queue's dead-letter stream
-- ARGV[1]  consumer group name
-- ARGV[2]  stream entry id
-- ARGV[3]  encoded message
-- ARGV[4]  reason (text, never a secret)
-- ARGV[5]  approximate maximum length of the dead-letter stream
-- ARGV[6]  delivery count of the entry
local t = redis.call('TIME')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[5]), '*',
  'm', ARGV[3], 'reason', ARGV[4], 'entry', ARGV[2], 'deliveries', ARGV[6], 'at', t[1])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
