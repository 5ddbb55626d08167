-- A running job takes (or gives back) units of a rate limit.
-- KEYS: leases zset, epoch, recovered-at
-- ARGV: now override, hold prefix, job id, op ('take' | 'give'), algo, state key, usage index
--       key, key label, N, period ms, burst, units
-- Returns {status, value, now}: status 1 granted (value: units given back, for 'give'), 0 not
-- now (value: retry ms, -1 = when a holder releases), -1 the job holds no lease, -2 never
-- (more units than the limit allows), -3 Redis lost its data and the node has not rebuilt yet.
local now = lim_now(ARGV[1])
local hprefix, id, op, algo, skey = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local n, p, b, units = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
if redis.call('EXISTS', KEYS[2]) == 0 then return {-3, 250, now} end
if not redis.call('ZSCORE', KEYS[1], id) then return {-1, 0, now} end
if op == 'give' then
  if algo ~= 'c' then return {1, 0, now} end
  local h = hprefix .. id
  local cur = tonumber(redis.call('HGET', h, skey)) or 0
  local r = math.min(units, cur)
  for j = cur - r + 1, cur do
    redis.call('ZREM', skey, id .. ':' .. j)
  end
  if cur - r > 0 then redis.call('HSET', h, skey, cur - r) else redis.call('HDEL', h, skey) end
  return {1, r, now}
end
local rec = tonumber(redis.call('GET', KEYS[3])) or 0
local avail, retry = lim_avail(algo, skey, n, p, b, now, rec, units)
if avail >= units then
  lim_charge(algo, skey, n, p, b, now, units, id, hprefix, rec)
  redis.call('ZADD', ARGV[7], now, ARGV[8])
  return {1, 0, now}
end
if retry == -2 then return {-2, 0, now} end
return {0, retry, now}
