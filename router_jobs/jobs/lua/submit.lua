-- Write a job record and enqueue its message in one step. With an idempotency key that was
-- already used, nothing is written and the existing job id is returned.
-- KEYS[1]  job hash
-- KEYS[2]  the queue's stream
-- KEYS[3]  the queue's delay sorted set
-- KEYS[4]  idempotency key (ignored when ARGV[7] == '0')
-- KEYS[5]  (held jobs only) the pool's joining set: job id -> ms its record was written,
--          until admit.lua puts it in line (a worker sweeps ids left there by a dead producer)
-- ARGV[1]  job id
-- ARGV[2]  job spec (JSON)
-- ARGV[3]  queue name
-- ARGV[4]  encoded broker message
-- ARGV[5]  record TTL in seconds
-- ARGV[6]  delay in ms before the job may run (0: now; -1: not enqueued here, the key
--          pool's wait line admits it)
-- ARGV[7]  '1' when KEYS[4] is an idempotency key to honour
-- Returns {job id, 1 if it already existed else 0}.
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {existing, 1} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'spec', ARGV[2], 'queue', ARGV[3], 'status', 'queued',
  'queued_at', string.format('%.6f', now), 'attempts', 0, 'deliveries', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
local delay = tonumber(ARGV[6])
if delay < 0 then
  -- held for the pool's wait line (admit.lua enqueues the message when room exists)
  if KEYS[5] then redis.call('ZADD', KEYS[5], math.floor(now * 1000), ARGV[1]) end
elseif delay > 0 then
  redis.call('ZADD', KEYS[3], now * 1000 + delay, ARGV[4])
else
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[4])
end
if ARGV[7] == '1' then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[5]))
end
return {ARGV[1], 0}
