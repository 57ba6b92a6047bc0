-- Renew or release a batch driver's lease, only while the caller still holds it.
-- KEYS[1]: the lease string (RedisSchema.gw_batch_lease)
-- ARGV[1]: the holder's id; ARGV[2]: "renew" or "release"; ARGV[3]: lease length in ms (renew)
-- Returns 1 when the caller held the lease (renewed / released), 0 otherwise.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 1
