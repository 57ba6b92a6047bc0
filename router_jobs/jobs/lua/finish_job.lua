-- Record a job's end exactly once and wake its awaiters. A job that already ended is left
-- alone (a duplicate delivery cannot write a second result).
-- KEYS[1]  job hash
-- KEYS[2]  the queue's per-minute completion counter (for operators)
-- ARGV[1]  final status (succeeded, failed, cancelled, expired)
-- ARGV[2]  result (JSON)
-- ARGV[3]  record TTL in seconds
-- ARGV[4]  pub/sub channel of the job
-- ARGV[5]  '1' to finish only a job that has not started (cancel), else '0'
-- Returns 1 when this call ended the job, 0 when it had ended already (or had started, for
-- a cancel), -1 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' and st ~= 'running' then return 0 end
if ARGV[5] == '1' and st ~= 'queued' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2],
  'finished_at', string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 180)
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
