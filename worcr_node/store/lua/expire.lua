-- Take leases whose deadline has passed, so exactly one node handles each.
-- KEYS: leases zset
-- ARGV: now (ms), max count
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return ids
