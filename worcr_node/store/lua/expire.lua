-- Take leases whose deadline has passed, so exactly one node handles each, and free the
-- concurrency units their jobs held.
-- KEYS: leases zset
-- ARGV: now (ms), max count, hold prefix
-- Returns {ids, freed state keys}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local freed = {}
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  for _, id in ipairs(ids) do
    lim_release_job(ARGV[3], id, freed)
  end
end
return {ids, freed}
