-- Running jobs as PostgreSQL knows them: lease those that have no lease (after a Redis flush, or
-- a failed requeue), and make every leased one hold the concurrency units its limits say (after
-- a flush, or a limit created while it ran). Units are only added, never taken away.
-- KEYS: leases zset
-- ARGV: hold prefix, now (ms), then per job: deadline (ms), id, hold count,
--       then per hold: state key, units, usage index key, key label
-- Returns the ids whose lease this call created.
local hprefix = ARGV[1]
local now = tonumber(ARGV[2])
local made = {}
local i = 3
while i <= #ARGV do
  local deadline, id, nh = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  if not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], deadline, id)
    made[#made + 1] = id
  end
  for _ = 1, nh do
    local skey, units, ikey, label = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local h = hprefix .. id
    local cur = tonumber(redis.call('HGET', h, skey)) or 0
    if cur < units then
      for j = cur + 1, units do
        redis.call('ZADD', skey, now, id .. ':' .. j)
      end
      redis.call('HSET', h, skey, units)
      redis.call('ZADD', ikey, now, label)
    end
  end
end
return made
