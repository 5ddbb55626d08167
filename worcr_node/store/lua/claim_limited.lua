-- Take up to n job ids from a lane's window, as many as its job limits admit, and lease them.
-- KEYS: window zset, leases zset, lane meta hash, ready-lanes set, epoch, recovered-at
-- ARGV: n, lease deadline (ms), lane id, now override ('' = Redis TIME), hold prefix, limit count,
--       then per limit: algo, state key, usage index key, key label, N, period ms, burst
-- Returns {ids, left, complete, head, now, blocker, retry ms, exhausted}: blocker is the 1-based
-- index of the limit that admitted nothing (0: none; -1: Redis lost its data and the node has
-- not rebuilt yet), retry ms when it may admit again (-1: when a holder releases); exhausted
-- lists, for limits left with no unit after this claim, index and retry ms pairs.
local now = lim_now(ARGV[4])
local hprefix = ARGV[5]
local nlim = tonumber(ARGV[6])
local rec = tonumber(redis.call('GET', KEYS[6])) or 0
local function lim(i)
  local o = 6 + (i - 1) * 7
  return ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], tonumber(ARGV[o + 5]),
         tonumber(ARGV[o + 6]), tonumber(ARGV[o + 7])
end
local function window_state()
  local left = redis.call('ZCARD', KEYS[1])
  local head = -1
  if left > 0 then head = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
  return left, redis.call('HGET', KEYS[3], 'c') or '0', head
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  local left, complete, head = window_state()
  return {{}, left, complete, head, now, -1, 250, {}}
end
local k = tonumber(ARGV[1])
local blocker, wait = 0, 0
for i = 1, nlim do
  local algo, skey, _, _, n, p, b = lim(i)
  local avail, retry = lim_avail(algo, skey, n, p, b, now, rec, 1)
  if avail < k then k = avail end
  if avail < 1 then
    -- report the limit that will stay shut longest (a concurrency limit: until a release)
    if blocker == 0 or retry == -1 or (wait ~= -1 and retry > wait) then
      blocker, wait = i, retry
    end
  end
end
if blocker > 0 then
  local left, complete, head = window_state()
  return {{}, left, complete, head, now, blocker, wait, {}}
end
local popped = redis.call('ZPOPMIN', KEYS[1], k)
local ids = {}
local head = -1
for i = 1, #popped, 2 do
  ids[#ids + 1] = popped[i]
  head = popped[i + 1]
  redis.call('ZADD', KEYS[2], ARGV[2], popped[i])
end
local exhausted = {}
if #ids > 0 then
  for i = 1, nlim do
    local algo, skey, ikey, label, n, p, b = lim(i)
    if algo == 'c' then
      for _, id in ipairs(ids) do lim_charge(algo, skey, n, p, b, now, 1, id, hprefix, rec) end
    else
      lim_charge(algo, skey, n, p, b, now, #ids, '', hprefix, rec)
    end
    redis.call('ZADD', ikey, now, label)
    local avail, retry = lim_avail(algo, skey, n, p, b, now, rec, 1)
    if avail < 1 then
      exhausted[#exhausted + 1] = i
      exhausted[#exhausted + 1] = retry
    end
  end
end
local left = redis.call('ZCARD', KEYS[1])
if left > 0 then
  head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
local complete = redis.call('HGET', KEYS[3], 'c') or '0'
if left == 0 and complete == '1' then
  redis.call('SREM', KEYS[4], ARGV[3])
end
return {ids, left, complete, tonumber(head), now, 0, 0, exhausted}
