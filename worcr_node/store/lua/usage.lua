-- Live usage of limit keys (read only, apart from pruning a sliding window's old entries).
-- KEYS: recovered-at
-- ARGV: now override, then per key: algo, state key, N, period ms, burst
-- Returns per key {used, available, retry ms} (retry: see lim_avail; 0 when available > 0).
local now = lim_now(ARGV[1])
local rec = tonumber(redis.call('GET', KEYS[1])) or 0
local out = {}
local i = 2
while i <= #ARGV do
  local algo, skey = ARGV[i], ARGV[i + 1]
  local n, p, b = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  local avail, retry = lim_avail(algo, skey, n, p, b, now, rec, 1)
  local cap = n
  if algo == 'b' then cap = b end
  out[#out + 1] = {cap - avail, avail, retry}
end
return {out, tostring(now)}
