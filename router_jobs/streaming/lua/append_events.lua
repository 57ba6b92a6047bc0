-- append_events.lua: append events to one job's event stream, numbered without gaps.
-- KEYS[1]  the job's event stream (schema.job_events(job_id))
-- ARGV[1]  TTL of the stream, in milliseconds (renewed on every append)
-- ARGV[2]  MAXLEN cap of the stream (approximate trimming, "~")
-- ARGV[3..] one JSON-encoded event each, in order
-- Each entry gets the fields s (sequence number: 0, 1, 2 … across every writer and attempt)
-- and e (the event). Returns the id of the last entry added.
local key = KEYS[1]
local seq = 0
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then
      seq = tonumber(fields[i + 1]) + 1
    end
  end
end
local id = ''
for i = 3, #ARGV do
  id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'e', ARGV[i])
  seq = seq + 1
end
redis.call('PEXPIRE', key, ARGV[1])
return id
