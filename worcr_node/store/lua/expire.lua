-- Take leases whose deadline has passed, so exactly one node handles each: their deadline moves
-- to the grace time while that node requeues the jobs in PostgreSQL, then releases the leases
-- (and the concurrency units the jobs hold: not before, so PostgreSQL never shows an attempt
-- running past the moment its units went to another). If that node dies meanwhile, the leases
-- expire again at the grace time and another node takes them.
-- KEYS: leases zset
-- ARGV: now (ms), max count, grace deadline (ms)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return ids
