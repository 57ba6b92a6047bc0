-- Reopen a job that ended because its message was dead-lettered, so that a replay of that
-- message runs it again: back to queued, its stored result removed. Any other ending (a
-- success, a provider's refusal, a cancel) is left alone.
-- KEYS[1]  job hash
-- Returns 1 when reopened (or still open), 0 when it ended otherwise, -1 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then return 1 end
if st ~= 'failed' then return 0 end
local ok, result = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'result') or '')
if not ok or type(result) ~= 'table' then return 0 end
if result['error_type'] ~= 'dead_lettered' and result['error_type'] ~= 'crashed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'result', 'finished_at')
return 1
