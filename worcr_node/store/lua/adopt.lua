-- Lease running jobs that have no lease (after a Redis flush, or a failed requeue).
-- KEYS: leases zset
-- ARGV: deadline (ms) / id pairs
-- Returns the number of leases created.
local made = 0
for i = 1, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    made = made + 1
  end
end
return made
