-- A running job goes back to waiting (backpressure or a retry later): mark it queued again
-- so that it can still be cancelled, and remember keys it must avoid.
-- KEYS[1]  job hash
-- ARGV[1]  comma-separated key ids to avoid from now on ('' for none)
-- ARGV[2]  attempts made so far
-- Returns 1 if parked, 0 if the job had ended meanwhile.
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' and st ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'excluded', ARGV[1], 'attempts', ARGV[2])
return 1
