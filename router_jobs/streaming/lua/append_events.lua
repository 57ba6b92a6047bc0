-- append_events.lua: append events to one job's event stream, numbered without gaps.
-- KEYS[1]  the job's event stream (schema.job_events(job_id))
-- ARGV[1]  TTL of the stream, in milliseconds (renewed on every append)
-- ARGV[2]  MAXLEN cap of the stream (approximate trimming, "~")
-- ARGV[3]  attempt number opening with this append, or 0: when the stream's last event belongs
--          to an earlier attempt still under way (started, delta, tool_call_delta, usage), its
--          worker died mid-stream, and an attempt_restarted event (reason worker_lost) goes first
-- ARGV[4..] one JSON-encoded event each, in order
-- Each entry gets the fields s (sequence number: 0, 1, 2 … across every writer and attempt)
-- and e (the event). Returns the id of the last entry added.
local key = KEYS[1]
local seq = 0
local prev = nil
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then
      seq = tonumber(fields[i + 1]) + 1
    elseif fields[i] == 'e' then
      prev = fields[i + 1]
    end
  end
end
local id = ''
local opening = tonumber(ARGV[3])
if opening > 0 and prev then
  local ev = cjson.decode(prev)
  local under_way = {started = true, delta = true, tool_call_delta = true, usage = true}
  local was = tonumber(ev['attempt']) or 0
  if under_way[ev['type']] and was < opening then
    local marker = cjson.encode({type = 'attempt_restarted', attempt = was, reason = 'worker_lost',
      message = 'the worker running attempt ' .. was .. ' stopped mid-stream; attempt ' .. opening .. ' starts over'})
    id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'e', marker)
    seq = seq + 1
  end
end
for i = 4, #ARGV do
  id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'e', ARGV[i])
  seq = seq + 1
end
redis.call('PEXPIRE', key, ARGV[1])
return id
