-- Take up to n job ids from the head of a lane's window and lease them.
-- KEYS: window zset, leases zset, lane meta hash, ready-lanes set
-- ARGV: n, lease deadline (ms), lane id
-- Returns {ids, ids left in the window, complete flag, head seq}: the head is the seq of the new
-- first id in the window, else of the last id taken, else -1. An empty, complete lane leaves the
-- ready set.
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local ids = {}
local head = -1
for i = 1, #popped, 2 do
  ids[#ids + 1] = popped[i]
  head = popped[i + 1]
  redis.call('ZADD', KEYS[2], ARGV[2], popped[i])
end
local left = redis.call('ZCARD', KEYS[1])
if left > 0 then
  head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
local complete = redis.call('HGET', KEYS[3], 'c') or '0'
if left == 0 and complete == '1' then
  redis.call('SREM', KEYS[4], ARGV[3])
end
return {ids, left, complete, tonumber(head)}
