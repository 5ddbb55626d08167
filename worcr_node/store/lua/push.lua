-- Jobs became ready (enqueue, promote, yield, requeue) after their PostgreSQL commit.
-- KEYS: window zset, lane meta hash, ready-lanes set
-- ARGV: window cap, lane id, fresh flag, then seq, id pairs
-- The ids go straight into the window only when the window holds the lane's whole backlog
-- (meta c = 1) and has room; otherwise the lane is marked incomplete and a refill pages them in.
-- fresh = '1': the lane was created by the same transaction that committed these jobs, so if
-- Redis knows nothing of it yet, these ids are its whole backlog.
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], 'c') == false then
  redis.call('HSET', KEYS[2], 'c', '1')
end
redis.call('HINCRBY', KEYS[2], 'v', 1)
local n = (#ARGV - 3) / 2
if redis.call('HGET', KEYS[2], 'c') == '1'
    and redis.call('ZCARD', KEYS[1]) + n <= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], unpack(ARGV, 4))
else
  redis.call('HSET', KEYS[2], 'c', '0')
end
return redis.call('SADD', KEYS[3], ARGV[2])
