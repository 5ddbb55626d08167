-- Jobs stopped running here (ack, fail, yield, cancel, a claim PostgreSQL refused): drop their
-- leases and every concurrency unit they hold.
-- KEYS: leases zset
-- ARGV: hold prefix, then job ids
-- Returns the state keys of the concurrency limits that got units back.
local freed = {}
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  lim_release_job(ARGV[1], ARGV[i], freed)
end
return freed
