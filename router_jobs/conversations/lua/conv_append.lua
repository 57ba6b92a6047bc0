-- Append one conversation turn (the job's own messages, then the reply) in one atomic step.
-- Idempotent per job id: a retried or redelivered job never appends twice.
-- KEYS[1] messages list       KEYS[2] metadata hash     KEYS[3] applied-job-ids set
-- KEYS[4] turn seq counter    KEYS[5] turn gate hash    KEYS[6] turn finished set  (TTL refresh only)
-- ARGV[1] job id   ARGV[2] ttl seconds   ARGV[3] tokens of this turn   ARGV[4] model
-- ARGV[5] key id   ARGV[6] provider      ARGV[7..n] messages as JSON {"role","content"}, in order
-- Returns 1 when the turn was appended, 0 when this job's turn was already there.
local job_id = ARGV[1]
local ttl = tonumber(ARGV[2])
if redis.call('SISMEMBER', KEYS[3], job_id) == 1 then
  for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
  return 0
end
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local n = #ARGV - 6
for i = 7, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('HSETNX', KEYS[2], 'created_at', now)
redis.call('HINCRBY', KEYS[2], 'message_count', n)
redis.call('HINCRBY', KEYS[2], 'total_tokens', tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], 'last_model', ARGV[4], 'last_key_id', ARGV[5],
  'last_provider', ARGV[6], 'updated_at', now)
redis.call('SADD', KEYS[3], job_id)
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
