-- Shared by the limit scripts (prepended to claim_limited, acquire, usage; not run alone).
-- Times are milliseconds on the Redis clock (TIME), so every node agrees on them. A limit is
-- (algo, state key, N, period ms, burst); algo: c concurrency, b token bucket (GCRA), f fixed
-- window, s sliding window (exact: one entry per admitted unit, in a sorted set).
-- `rec` is when Redis last lost its data (0: never): state missing within one period after it is
-- taken as full, so a limit restarts conservatively instead of admitting a second allowance.

local function lim_now(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- A token bucket's theoretical arrival time: a missing bucket is full, unless Redis lost its data
-- less than a burst ago: then it counts as empty at the loss.
local function lim_bucket_tat(skey, t, b, now, rec)
  local tat = tonumber(redis.call('GET', skey))
  if not tat then
    tat = now
    if rec > 0 and now < rec + b * t then tat = rec + b * t end
  end
  if tat < now then tat = now end
  return tat
end

-- Units admissible now, and (when fewer than `need`) ms until `need` units are: -1 = when a
-- holder releases (concurrency), -2 = never (need > N).
local function lim_avail(algo, skey, n, p, b, now, rec, need)
  if algo == 'c' then
    local avail = n - redis.call('ZCARD', skey)
    if avail >= need then return avail, 0 end
    if need > n then return avail, -2 end
    return avail, -1
  elseif algo == 'b' then
    local t = p / n
    local tat = lim_bucket_tat(skey, t, b, now, rec)
    local free = math.floor((now + b * t - tat) / t + 1e-9)
    if free > b then free = b end
    if free >= need then return free, 0 end
    if need > b then return free, -2 end
    return free, math.max(1, math.ceil(tat - b * t + need * t - now))
  elseif algo == 'f' then
    local w = math.floor(now / p)
    local count = tonumber(redis.call('GET', skey .. ':' .. w))
    if not count then
      count = 0
      if rec > 0 and rec >= w * p then count = n end
    end
    local avail = n - count
    if avail >= need then return avail, 0 end
    if need > n then return avail, -2 end
    return avail, math.max(1, math.ceil((w + 1) * p - now))
  else
    redis.call('ZREMRANGEBYSCORE', skey, '-inf', now - p)
    local count = redis.call('ZCARD', skey)
    if count == 0 and rec > 0 and now < rec + p then
      return 0, math.max(1, math.ceil(rec + p - now))
    end
    local avail = n - count
    if avail >= need then return avail, 0 end
    if need > n then return avail, -2 end
    local at = redis.call('ZRANGE', skey, count + need - n - 1, count + need - n - 1, 'WITHSCORES')
    return avail, math.max(1, math.ceil(tonumber(at[2]) + p - now))
  end
end

-- Take `units` (already known to be available). `holder`: the job id for concurrency holds,
-- registered in hprefix..holder so that releasing the job's lease releases them.
local function lim_charge(algo, skey, n, p, b, now, units, holder, hprefix, rec)
  if algo == 'c' then
    local h = hprefix .. holder
    local cur = tonumber(redis.call('HGET', h, skey)) or 0
    for i = cur + 1, cur + units do
      redis.call('ZADD', skey, now, holder .. ':' .. i)
    end
    redis.call('HSET', h, skey, cur + units)
  elseif algo == 'b' then
    local t = p / n
    local tat = lim_bucket_tat(skey, t, b, now, rec) + units * t
    redis.call('SET', skey, tat, 'PX', math.ceil(tat - now) + 1000)
  elseif algo == 'f' then
    local wkey = skey .. ':' .. math.floor(now / p)
    redis.call('INCRBY', wkey, units)
    redis.call('PEXPIRE', wkey, math.ceil(p) + 1000)
  else
    local last = redis.call('INCRBY', skey .. ':n', units)
    for i = last - units + 1, last do
      redis.call('ZADD', skey, now, i)
    end
    redis.call('PEXPIRE', skey, math.ceil(p) + 1000)
    redis.call('PEXPIRE', skey .. ':n', math.ceil(p) + 1000)
  end
end

-- Release every concurrency unit a job holds (its lease ended); returns nothing, appends the
-- freed state keys to `freed`.
local function lim_release_job(hprefix, id, freed)
  local h = hprefix .. id
  local held = redis.call('HGETALL', h)
  if #held == 0 then return end
  for i = 1, #held, 2 do
    local skey = held[i]
    for j = 1, tonumber(held[i + 1]) do
      redis.call('ZREM', skey, id .. ':' .. j)
    end
    freed[#freed + 1] = skey
  end
  redis.call('DEL', h)
end
