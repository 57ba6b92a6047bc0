-- A worker takes up a job: count the delivery and mark it running unless it already ended.
-- KEYS[1]  job hash
-- Returns {status before, spec, queued_at, attempts, server time} or {} if the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local st = redis.call('HGET', KEYS[1], 'status')
local t = redis.call('TIME')
local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
if st == 'queued' or st == 'running' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('HSET', KEYS[1], 'status', 'running')
  if not redis.call('HGET', KEYS[1], 'started_at') then
    redis.call('HSET', KEYS[1], 'started_at', now)
  end
end
local v = redis.call('HMGET', KEYS[1], 'spec', 'queued_at', 'attempts', 'started_at', 'excluded')
return {st, v[1], v[2], v[3], now, v[4] or now, v[5] or ''}
