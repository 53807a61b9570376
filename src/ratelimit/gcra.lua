-- GCRA for one tenant, atomically in Redis: the arithmetic of the local
-- limiter (src/ratelimit/mod.rs, Gcra::rescale and Gcra::check), on Redis's
-- clock so instances with skewed clocks agree.
--
-- KEYS[1]  the tenant's key (<key_prefix>t:<tenant>: tenants' keys have a
--          namespace of their own, apart from tenantwatch's meta: keys)
-- ARGV[1]  T: nanoseconds between two cells (the emission interval)
-- ARGV[2]  tau: how far ahead of now the TAT may run, in nanoseconds
-- ARGV[3]  the cost's cells beyond the first, in nanoseconds (T * (cost - 1))
-- ARGV[4], ARGV[5]  optional: "now" as seconds and microseconds instead of
--          Redis's TIME (the tests compare this script with the local
--          limiter on one clock; tenantwatch never passes them)
--
-- Returns {1, remaining} when allowed (the cells are spent) or {0, wait} when
-- denied, wait in nanoseconds. The caller has already refused a cost above
-- the burst.
--
-- The key is a hash: the TAT as whole seconds (s) and nanoseconds within
-- them (ns), and the T it was spent at (t). Lua numbers are doubles, exact
-- to 2^53: nanoseconds since 1970 are not, so the TAT is kept in two parts
-- and all arithmetic is on its distance from now, which is. A TAT behind now
-- is the same as none, so the key expires when the TAT passes.
local key = KEYS[1]
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local additional = tonumber(ARGV[3])

local clock
if ARGV[5] then
  clock = {ARGV[4], ARGV[5]}
else
  clock = redis.call('TIME')
end
local now_s = tonumber(clock[1])
local now_ns = tonumber(clock[2]) * 1000

-- Keeps TAT = now + ahead, spent at interval t. The key lives until the TAT
-- passes (in Redis's time; a given clock leaves expiry to the caller).
local function store(ahead_ns)
  local tat_ns = now_ns + ahead_ns
  local carry = math.floor(tat_ns / 1e9)
  redis.call('HSET', key, 's', string.format('%d', now_s + carry),
    'ns', string.format('%d', tat_ns - carry * 1e9), 't', string.format('%d', t))
  if not ARGV[5] then
    redis.call('PEXPIRE', key, math.ceil(ahead_ns / 1e6) + 1)
  end
end

-- ahead = TAT - now, in nanoseconds.
local ahead = 0
local state = redis.call('HMGET', key, 's', 'ns', 't')
if state[1] and state[2] and state[3] then
  ahead = (tonumber(state[1]) - now_s) * 1e9 + (tonumber(state[2]) - now_ns)
  local spent_at = tonumber(state[3])
  if ahead > 0 and spent_at ~= t then
    -- The quota changed: the cells already spent stay spent, counted in
    -- the new interval (Gcra::rescale), whatever this check's verdict.
    ahead = math.floor(ahead / spent_at * t)
    store(ahead)
  end
end
if ahead < 0 then
  ahead = 0
end

local wait = ahead + additional - tau
if wait > 0 then
  return {0, wait}
end

local next_ahead = ahead + t + additional
local remaining = math.floor(math.min(t + tau - next_ahead, tau) / t)
if remaining < 0 then
  remaining = 0
end
store(next_ahead)
return {1, remaining}
