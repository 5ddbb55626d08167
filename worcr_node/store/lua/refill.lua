-- Page the head of a lane's ready backlog (read from PostgreSQL) into its window.
-- KEYS: window zset, lane meta hash, leases zset, ready-lanes set
-- ARGV: lane version read before the PostgreSQL read, '1' if the read saw the whole backlog,
--       lane id, then seq, id pairs
-- Ids that hold a lease (claimed, PostgreSQL not yet updated) are skipped. The lane is marked
-- complete only if nothing was pushed to it since the read began (version unchanged).
for i = 4, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[3], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local v = redis.call('HGET', KEYS[2], 'v') or '0'
local complete = (v == ARGV[1] and ARGV[2] == '1')
redis.call('HSET', KEYS[2], 'c', complete and '1' or '0')
local left = redis.call('ZCARD', KEYS[1])
if left == 0 and complete then
  redis.call('SREM', KEYS[4], ARGV[3])
else
  redis.call('SADD', KEYS[4], ARGV[3])
end
return left
