"""The server-side scripts of the Redis backend: each decision that must be atomic
across processes is one script, run where the data is.

Times are the Redis server's (``TIME``), so hosts' clocks never have to agree;
what a script tells a process is relative ("open for 12000 more ms"). Every key a
script touches is in ``KEYS`` and shares one hash tag, so each runs on one slot of a
Redis Cluster. A circuit report is ``c<TAB>entry<TAB>failures<TAB>ms left (-1:
closed)<TAB>probing<TAB>version``; a block report is ``b<TAB>entry<TAB>ms left<TAB>reason``.
A report's version is the server's time in microseconds when it was made: scripts run
one at a time, so a later report has a larger version, and a process applies a report
only if it is newer than the last it applied for that entry (a message can arrive after
the script's own answer, or after a newer change).
"""

from __future__ import annotations

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function version()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local function report(key, entry, now)
  local h = redis.call('HMGET', key, 'f', 'o', 'p')
  local o = tonumber(h[2]) or 0
  local left = -1
  if o > 0 then left = o - now end
  local probing = 0
  if (tonumber(h[3]) or 0) > now then probing = 1 end
  return 'c\\t' .. entry .. '\\t' .. (tonumber(h[1]) or 0) .. '\\t' .. left .. '\\t' .. probing
    .. '\\t' .. version()
end
"""

FAILURE = (
    _PRELUDE
    + """
-- KEYS: circuit. ARGV: entry, channel, threshold, cooldown ms, key ttl ms.
-- Opens at the threshold; a failure while open extends the cooldown.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'f', 'o')
local f = (tonumber(h[1]) or 0) + 1
local o = tonumber(h[2]) or 0
local opened = 0
if o > 0 or f >= tonumber(ARGV[3]) then
  if o <= now then opened = 1 end
  redis.call('HSET', KEYS[1], 'f', f, 'o', now + tonumber(ARGV[4]), 'p', 0)
else
  redis.call('HSET', KEYS[1], 'f', f)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local message = report(KEYS[1], ARGV[1], now)
redis.call('PUBLISH', ARGV[2], message)
return {opened, message}
"""
)

SUCCESS = (
    _PRELUDE
    + """
-- KEYS: circuit. ARGV: entry, channel.
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 'c\\t' .. ARGV[1] .. '\\t0\\t-1\\t0\\t' .. version())
end
return 1
"""
)

ADMIT = (
    _PRELUDE
    + """
-- KEYS: circuit. ARGV: entry, channel, probe ms. Closed: yes. Half-open with no
-- probe running: yes, and this caller is the one probe, cluster-wide.
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'o', 'p')
local o = tonumber(h[1]) or 0
local admitted = 0
if o == 0 then
  admitted = 1
elseif o <= now and (tonumber(h[2]) or 0) <= now then
  redis.call('HSET', KEYS[1], 'p', now + tonumber(ARGV[3]))
  admitted = 2
end
local message = report(KEYS[1], ARGV[1], now)
if admitted == 2 then redis.call('PUBLISH', ARGV[2], message) end
return {admitted, message}
"""
)

RELEASE = (
    _PRELUDE
    + """
-- KEYS: circuit. ARGV: entry, channel. A probe that ended with no verdict.
if (tonumber(redis.call('HGET', KEYS[1], 'p')) or 0) > 0 then
  redis.call('HSET', KEYS[1], 'p', 0)
  redis.call('PUBLISH', ARGV[2], report(KEYS[1], ARGV[1], now_ms()))
end
return 1
"""
)

MERGE = (
    _PRELUDE
    + """
-- KEYS: circuit. ARGV: entry, channel, failures, ms left, key ttl ms. What a process
-- learned alone while Redis was away: the later cooldown wins.
local now = now_ms()
local until_ms = now + tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'f', 'o')
if (tonumber(h[2]) or 0) < until_ms then
  redis.call('HSET', KEYS[1], 'f', math.max(tonumber(h[1]) or 0, tonumber(ARGV[3])),
             'o', until_ms, 'p', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PUBLISH', ARGV[2], report(KEYS[1], ARGV[1], now))
end
return 1
"""
)

READ = (
    _PRELUDE
    + """
-- KEYS: circuits, then blocks. ARGV: their entries. Every circuit and block, as reports.
local now = now_ms()
local out = {}
local n = #ARGV
for i = 1, n do
  out[#out + 1] = report(KEYS[i], ARGV[i], now)
  local left = redis.call('PTTL', KEYS[n + i])
  if left > 0 then
    out[#out + 1] = 'b\\t' .. ARGV[i] .. '\\t' .. left .. '\\t' .. redis.call('GET', KEYS[n + i])
  end
end
return out
"""
)

BLOCK = """
-- KEYS: block. ARGV: entry, channel, ms, reason. An upstream said it has nothing left.
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[2], 'b\\t' .. ARGV[1] .. '\\t' .. ARGV[3] .. '\\t' .. ARGV[4])
return 1
"""

ACQUIRE = (
    _PRELUDE
    + """
-- KEYS: request starts (zset), tokens by minute (hash), leases (zset), block.
-- ARGV: rpm, tpm, concurrent (0: none), tokens, lease id, lease ms.
-- Checks every limit, then counts the attempt under all of them, or none.
local now = now_ms()
local rpm, tpm, concurrent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local blocked = redis.call('PTTL', KEYS[4])
if blocked > 0 then return {0, redis.call('GET', KEYS[4]), blocked} end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 'rpm limit ' .. rpm .. ' reached', tonumber(oldest[2]) + 60000 - now}
  end
end
local window = math.floor(now / 60000)
if tpm > 0 then
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(field) < window - 1 then redis.call('HDEL', KEYS[2], field) end
  end
  local current = tonumber(redis.call('HGET', KEYS[2], window)) or 0
  local previous = tonumber(redis.call('HGET', KEYS[2], window - 1)) or 0
  local used = current + previous * (1 - (now % 60000) / 60000)
  if used > 0 and used + tokens > tpm then
    return {0, 'tpm limit ' .. tpm .. ' reached', 60000 - now % 60000}
  end
end
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= concurrent then
    return {0, 'concurrent limit ' .. concurrent .. ' reached', 0}
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], window, tokens)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {1, '', window}
"""
)

FINISH = """
-- KEYS: tokens by minute, leases. ARGV: lease id, window, token correction.
local correction = tonumber(ARGV[3])
if correction ~= 0 and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], correction)
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

RENEW = (
    _PRELUDE
    + """
-- KEYS: leases. ARGV: lease ms, lease ids. Long answers keep their places.
local until_ms = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

SPEND = (
    _PRELUDE
    + """
-- KEYS: budget (hash of 'q<second>' requests and 'r<second>' extra attempts).
-- ARGV: window seconds, ratio, minimum per second. One extra attempt, if the budget
-- allows it.
local second = math.floor(now_ms() / 1000)
local window = tonumber(ARGV[1])
local requests, extra = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local at = tonumber(string.sub(fields[i], 2))
  if at <= second - window then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif string.sub(fields[i], 1, 1) == 'q' then
    requests = requests + tonumber(fields[i + 1])
  else
    extra = extra + tonumber(fields[i + 1])
  end
end
if extra + 1 > tonumber(ARGV[3]) * window + tonumber(ARGV[2]) * requests then return 0 end
redis.call('HINCRBY', KEYS[1], 'r' .. second, 1)
redis.call('PEXPIRE', KEYS[1], (window + 1) * 1000)
return 1
"""
)

SYNC = (
    _PRELUDE
    + """
-- KEYS: processes (zset by last report), their reports (hash), budget.
-- ARGV: process id, its report, report ttl ms, requests since the last sync,
-- budget window seconds. Forgets processes silent for the ttl; returns every report.
local now = now_ms()
local ttl = tonumber(ARGV[3])
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do
  redis.call('HDEL', KEYS[2], dead)
  redis.call('ZREM', KEYS[1], dead)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local second = math.floor(now / 1000)
local stale = second - tonumber(ARGV[5]) - 1
redis.call('HDEL', KEYS[3], 'q' .. stale, 'r' .. stale)
local requests = tonumber(ARGV[4])
if requests > 0 then
  redis.call('HINCRBY', KEYS[3], 'q' .. second, requests)
  redis.call('PEXPIRE', KEYS[3], (tonumber(ARGV[5]) + 1) * 1000)
end
return redis.call('HGETALL', KEYS[2])
"""
)

_HOLDS = """
-- A scope's window: a hash ('s': micro-dollars settled, 'h': micro-dollars held) and a
-- zset of its open reservations ('<id>=<micro-dollars>', scored by deadline in ms).
local function purge(spend, holds, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired == 0 then return end
  local freed = 0
  for _, member in ipairs(expired) do
    freed = freed + tonumber(string.match(member, '=(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  redis.call('HINCRBY', spend, 'h', string.format('%d', -freed))
end
local function expire(spend, holds, at)
  if at ~= '0' then
    redis.call('PEXPIREAT', spend, at)
    redis.call('PEXPIREAT', holds, at)
  end
end
"""

RESERVE = (
    _PRELUDE
    + _HOLDS
    + """
-- KEYS: n spend hashes, then their n holds. ARGV: reservation id, micro-dollars,
-- ttl ms, then per scope: its limit in micro-dollars, its keys' expiry (Unix ms, 0:
-- never). Holds the amount on every scope, or on none: {1, settled, held, ...} after
-- it, or {0, index of the first scope without room, its settled, its held}.
local now = now_ms()
local n = #KEYS / 2
local amount = tonumber(ARGV[2])
local figures = {1}
for i = 1, n do
  purge(KEYS[i], KEYS[n + i], now)
  local h = redis.call('HMGET', KEYS[i], 's', 'h')
  local settled, held = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  if settled + held + amount > tonumber(ARGV[2 + 2 * i]) then
    return {0, i, settled, held}
  end
  figures[#figures + 1] = settled
  figures[#figures + 1] = held + amount
end
local member = ARGV[1] .. '=' .. ARGV[2]
local deadline = now + tonumber(ARGV[3])
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'h', ARGV[2])
  redis.call('ZADD', KEYS[n + i], deadline, member)
  expire(KEYS[i], KEYS[n + i], ARGV[3 + 2 * i])
end
return figures
"""
)

SETTLE = (
    _PRELUDE
    + _HOLDS
    + """
-- KEYS: n spend hashes, their n holds, the settled ids (zset by when they are forgotten).
-- ARGV: settle id, the reservation's hold member ('': nothing held), ms to remember the
-- id, then per scope: micro-dollars to count, its keys' expiry (Unix ms, 0: never).
-- Once per id: {1 (counted now) or 0 (counted before), settled, ...}.
local now = now_ms()
local settled_ids = KEYS[#KEYS]
local n = (#KEYS - 1) / 2
redis.call('ZREMRANGEBYSCORE', settled_ids, '-inf', now)
local counted = 1
if redis.call('ZSCORE', settled_ids, ARGV[1]) then counted = 0 end
local figures = {counted}
for i = 1, n do
  purge(KEYS[i], KEYS[n + i], now)
  if counted == 1 then
    if ARGV[2] ~= '' and redis.call('ZREM', KEYS[n + i], ARGV[2]) == 1 then
      local held = tonumber(string.match(ARGV[2], '=(%d+)$'))
      redis.call('HINCRBY', KEYS[i], 'h', string.format('%d', -held))
    end
    if ARGV[2 + 2 * i] ~= '0' then
      redis.call('HINCRBY', KEYS[i], 's', ARGV[2 + 2 * i])
      expire(KEYS[i], KEYS[n + i], ARGV[3 + 2 * i])
    end
  end
  figures[#figures + 1] = tonumber(redis.call('HGET', KEYS[i], 's')) or 0
end
if counted == 1 then
  local remember = tonumber(ARGV[3])
  redis.call('ZADD', settled_ids, now + remember, ARGV[1])
  if redis.call('PTTL', settled_ids) < remember then
    redis.call('PEXPIRE', settled_ids, remember)
  end
end
return figures
"""
)

SHRINK = (
    _PRELUDE
    + """
-- KEYS: n spend hashes, then their n holds. ARGV: a hold's member, its new member, the
-- micro-dollars given back. A grant still in use keeps only what it admitted (a hold
-- already expired stays gone). {1}.
local n = #KEYS / 2
for i = 1, n do
  local deadline = redis.call('ZSCORE', KEYS[n + i], ARGV[1])
  if deadline then
    redis.call('ZREM', KEYS[n + i], ARGV[1])
    redis.call('ZADD', KEYS[n + i], deadline, ARGV[2])
    redis.call('HINCRBY', KEYS[i], 'h', string.format('%d', -tonumber(ARGV[3])))
  end
end
return {1}
"""
)

SPENT = (
    _PRELUDE
    + _HOLDS
    + """
-- KEYS: a spend hash, its holds. {settled, held} in micro-dollars, expired holds purged.
purge(KEYS[1], KEYS[2], now_ms())
local h = redis.call('HMGET', KEYS[1], 's', 'h')
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0}
"""
)

# Affinity pins -------------------------------------------------------------------------
# A pin is a plain string (the entry's name) under {prefix}:pin:<key>, expiring after its
# TTL of idleness: reading or touching it renews that TTL. A pin made or moved is
# published (p<TAB>key<TAB>entry<TAB>ttl ms), so that processes holding a copy follow.

PIN_GET = """
-- KEYS: the pin. ARGV: its TTL in ms. The entry's name, or nil; the TTL renewed.
return redis.call('GETEX', KEYS[1], 'PX', ARGV[1])
"""

PIN_TOUCH = """
-- KEYS: the pin. ARGV: its TTL in ms (a copy of it was used in a process).
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

PIN_PUT = """
-- KEYS: the pin. ARGV: the entry's name, the TTL in ms, the channel, the pin's key.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'p\t' .. ARGV[4] .. '\t' .. ARGV[1] .. '\t' .. ARGV[2])
return 1
"""
