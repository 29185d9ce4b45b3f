"""The shared store across machines: Redis (the optional ``[redis]`` extra, the ``redis`` client).

Same protocol and semantics as :class:`_shared_sqlite.SqliteStore` (see :mod:`_shared_base`).
Every update is one Lua script run atomically by the server (``EVALSHA``, loaded again when the
server lost it), on the server's clock (``TIME``), so machines with skewed clocks still share one
refill. A scope's keys share one hash tag (``oa:{<scope>}:s`` its buckets and pause,
``oa:{<scope>}:h`` / ``:hd`` its holds), as do a budget's (``oa:{b<hash of the name>}:...``), so
a Redis Cluster keeps each script on one slot. Keys expire a day after their last update.

A lost server costs a request at most ``socket_timeout_s``: the first failure logs one warning,
every call answers None (per-process admission) and the store tries again every ``retry_s``.

>>> store = RedisStore("redis://127.0.0.1:6379/0")
>>> store.budget_report("nightly")
BudgetReport(name='nightly', spent_usd=0.0, ...)
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from typing import Any, Callable, Mapping, Optional

from _shared_base import (
    DEFAULT_TTL_S,
    EPS_USD,
    GOLDEN,
    KINDS,
    SCOPE_COLUMNS,
    SPREAD_MAX_S,
    SPREAD_MIN_S,
    SPREAD_SHARE,
    BucketState,
    BudgetGrant,
    BudgetReport,
    Grant,
    Guard,
    ScopeState,
    amounts,
    budget_name,
    check_grant,
    check_scope,
    floors_of,
    limits_of,
    live_stores,
    owner,
    settle_hold,
)
from _validation import check_number, check_seconds

logger = logging.getLogger("claude_client._shared_limits")

__all__ = ["RedisStore", "REDIS_SCHEMES"]

#: URL schemes a Redis setting may use.
REDIS_SCHEMES = ("redis", "rediss", "unix")
_KEY_TTL_S = 86_400

# ------------------------------------------------------------------------------ Lua
_PRELUDE = (
    "local F = {"
    + ",".join(f"'{c}'" for c in SCOPE_COLUMNS)
    + "}\n"
    + r"""
local function clock() local t = redis.call('TIME') return tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local function fmt(x) return string.format('%.17g', x) end
local function nz(x) return tonumber(x) or 0 end
local function load(key)
  local v = redis.call('HMGET', key, unpack(F))
  local st = {cap = {}, rate = {}, level = {}, cum = {}, learned = {}, exists = v[16] ~= false}
  for i = 1, 3 do
    local b = (i - 1) * 5
    st.cap[i] = tonumber(v[b + 1]) or 0
    st.rate[i] = tonumber(v[b + 2]) or 0
    st.level[i] = tonumber(v[b + 3]) or 0
    st.cum[i] = tonumber(v[b + 4]) or 0
    st.learned[i] = tonumber(v[b + 5]) or 0
  end
  st.last = tonumber(v[16]) or 0
  st.pause_until = tonumber(v[17]) or 0
  st.pause_len = tonumber(v[18]) or 0
  st.callers = tonumber(v[19]) or 0
  return st
end
local function save(key, st)
  local a = {}
  for i = 1, 3 do
    local b = (i - 1) * 5
    a[#a + 1] = F[b + 1]; a[#a + 1] = fmt(st.cap[i])
    a[#a + 1] = F[b + 2]; a[#a + 1] = fmt(st.rate[i])
    a[#a + 1] = F[b + 3]; a[#a + 1] = fmt(st.level[i])
    a[#a + 1] = F[b + 4]; a[#a + 1] = fmt(st.cum[i])
    a[#a + 1] = F[b + 5]; a[#a + 1] = fmt(st.learned[i])
  end
  a[#a + 1] = F[16]; a[#a + 1] = fmt(st.last)
  a[#a + 1] = F[17]; a[#a + 1] = fmt(st.pause_until)
  a[#a + 1] = F[18]; a[#a + 1] = fmt(st.pause_len)
  a[#a + 1] = F[19]; a[#a + 1] = tostring(st.callers)
  redis.call('HSET', key, unpack(a))
  redis.call('EXPIRE', key, KEY_TTL)
end
local function refill(st, now)
  if now > st.last then
    local dt = now - st.last
    for i = 1, 3 do
      if st.cap[i] > 0 then st.level[i] = math.min(st.cap[i], st.level[i] + dt * st.rate[i]) end
    end
    st.last = now
  end
end
local function give(st, d)
  for i = 1, 3 do
    if st.cap[i] > 0 and d[i] ~= 0 then st.level[i] = math.min(st.cap[i], st.level[i] + d[i]) end
  end
end
local function wait_for(st, need)
  local w = 0
  for i = 1, 3 do
    if st.cap[i] > 0 and need[i] > 0 then
      local short = math.min(need[i], st.cap[i]) - st.level[i]
      if short > 0 then w = math.max(w, short / st.rate[i]) end
    end
  end
  return w
end
local function pause_wait(st, now)
  if now >= st.pause_until then return nil end
  local slot = st.callers
  st.callers = st.callers + 1
  local width = math.min(math.max(SPREAD_SHARE * st.pause_len, SPREAD_MIN), SPREAD_MAX)
  local x = slot * GOLDEN
  return st.pause_until - now + (x - math.floor(x)) * width
end
local function reap(st, hk, hdk, now)
  local ids = redis.call('ZRANGEBYSCORE', hk, '-inf', fmt(now))
  for _, id in ipairs(ids) do
    local d = redis.call('HGET', hdk, id)
    if d then
      local a = {}
      for x in string.gmatch(d, '%S+') do a[#a + 1] = tonumber(x) end
      give(st, a)
    end
    redis.call('HDEL', hdk, id)
    redis.call('ZREM', hk, id)
  end
  return #ids
end
local function nums(first, n)
  local a = {}
  for k = 0, n - 1 do a[k + 1] = tonumber(ARGV[first + k]) end
  return a
end
local function triple(t) return fmt(t[1]), fmt(t[2]), fmt(t[3]) end
"""
)


def _lua(body: str) -> str:
    consts = (
        f"local KEY_TTL = {_KEY_TTL_S}\nlocal SPREAD_SHARE = {SPREAD_SHARE!r}\nlocal SPREAD_MIN = {SPREAD_MIN_S!r}\n"
        f"local SPREAD_MAX = {SPREAD_MAX_S!r}\nlocal GOLDEN = {GOLDEN!r}\nlocal EPS = {EPS_USD!r}\n"
    )
    # One reply string (fields joined by spaces): redis-py parses one bulk reply much faster than many.
    return consts + _PRELUDE + "local function main()\n" + body + "\nend\n" + _JOIN


_JOIN = "local r = main()\nif type(r) == 'table' then return table.concat(r, ' ') end\nreturn r\n"


# KEYS: scope hash, holds zset, holds data. ARGV: need x3, extra x3, held x3, ttl, hold id, has extra.
# Returns: granted, wait, now, paused, cap x3, taken x3, level x3, cum x3, held (1/0).
_ACQUIRE = _lua(r"""
local st = load(KEYS[1])
local now = math.max(clock(), st.last)
if not st.exists then return {'1', '0', fmt(now), '0'} end
refill(st, now)
local pw = pause_wait(st, now)
if pw then
  redis.call('HSET', KEYS[1], 'pause_callers', tostring(st.callers))
  return {'0', fmt(pw), fmt(now), '1', triple(st.cap)}
end
local need = nums(1, 3)
local w = wait_for(st, need)
if w > 0 and reap(st, KEYS[2], KEYS[3], now) > 0 then
  save(KEYS[1], st)
  w = wait_for(st, need)
end
if w > 0 then return {'0', fmt(w), fmt(now), '0', fmt(st.cap[1]), fmt(st.cap[2]), fmt(st.cap[3]),
                      '0', '0', '0', triple(st.level)} end
local extra = nums(4, 3)
local held = nums(7, 3)
local taken = {0, 0, 0}
local hold = {}
local any = false
for i = 1, 3 do
  if st.cap[i] > 0 then
    local amount = need[i]
    if ARGV[12] == '1' and extra[i] > 0 then
      amount = amount + math.min(extra[i], math.max(0, st.level[i] - need[i] - 0.5 * st.cap[i]))
    end
    st.level[i] = st.level[i] - amount
    st.cum[i] = st.cum[i] + amount
    taken[i] = amount
    hold[i] = held[i]
    if held[i] > 0 then any = true end
  else
    hold[i] = 0
  end
end
save(KEYS[1], st)
local made = '0'
if any then
  local expires = now + tonumber(ARGV[10])
  redis.call('ZADD', KEYS[2], fmt(expires), ARGV[11])
  redis.call('HSET', KEYS[3], ARGV[11], fmt(hold[1]) .. ' ' .. fmt(hold[2]) .. ' ' .. fmt(hold[3]))
  redis.call('EXPIRE', KEYS[2], KEY_TTL)
  redis.call('EXPIRE', KEYS[3], KEY_TTL)
  made = '1'
end
local out = {'1', '0', fmt(now), '0'}
for _, t in ipairs({st.cap, taken, st.level, st.cum}) do
  for i = 1, 3 do out[#out + 1] = fmt(t[i]) end
end
out[#out + 1] = made
return out
""")

# KEYS: scope hash, holds zset, holds data. ARGV: hold id ('' none), delta if open x3, delta if expired x3.
_SETTLE = _lua(r"""
local st = load(KEYS[1])
if not st.exists then return 1 end
refill(st, math.max(clock(), st.last))
local d = nums(2, 3)
if ARGV[1] ~= '' then
  local alive = redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if alive == 0 then d = nums(5, 3) end
end
give(st, d)
save(KEYS[1], st)
return 1
""")

# KEYS: scope hash. ARGV: capacity x3 (0: none), minute x3, floor given x3 (1/0), remaining x3,
# mark given x3 (1/0), mark x3.
_LEARN = _lua(r"""
local st = load(KEYS[1])
local now = math.max(clock(), st.last)
refill(st, now)
st.last = now
local cap, minute, fl, left, mg, mark = nums(1, 3), nums(4, 3), nums(7, 3), nums(10, 3), nums(13, 3), nums(16, 3)
for i = 1, 3 do
  local floor = nil
  if fl[i] == 1 then
    local since = 0
    if mg[i] == 1 then since = math.max(0, st.cum[i] - mark[i]) end
    floor = math.max(0, left[i] - since)
  end
  if cap[i] > 0 then
    if st.cap[i] <= 0 then
      if floor == nil then st.level[i] = cap[i] else st.level[i] = math.min(floor, cap[i]) end
    elseif cap[i] ~= st.cap[i] then
      st.level[i] = math.min(cap[i], st.level[i] + cap[i] - st.cap[i])
    end
    st.cap[i] = cap[i]
    st.rate[i] = cap[i] / minute[i]
    st.learned[i] = now
  end
  if floor ~= nil and st.cap[i] > 0 then st.level[i] = math.min(st.level[i], floor) end
end
save(KEYS[1], st)
return 1
""")

# KEYS: scope hash. ARGV: signed delta x3.
_GIVE = _lua(r"""
local st = load(KEYS[1])
if not st.exists then return 1 end
refill(st, math.max(clock(), st.last))
give(st, nums(1, 3))
save(KEYS[1], st)
return 1
""")

# KEYS: scope hash. ARGV: seconds. Returns this caller's wait.
_PAUSE = _lua(r"""
local st = load(KEYS[1])
local now = math.max(clock(), st.last)
refill(st, now)
local length = tonumber(ARGV[1])
if now + length > st.pause_until then
  if now >= st.pause_until then st.callers = 0 end
  st.pause_until = now + length
  st.pause_len = length
end
local w = pause_wait(st, now) or 0
save(KEYS[1], st)
return fmt(w)
""")

# KEYS: scope hash, holds zset, holds data. Returns now, pause_until, holds, then per kind cap, rate, level, learned.
_STATE = _lua(r"""
local st = load(KEYS[1])
local now = math.max(clock(), st.last)
refill(st, now)
if st.exists and reap(st, KEYS[2], KEYS[3], now) > 0 then save(KEYS[1], st) end
local out = {fmt(now), fmt(st.pause_until), tostring(redis.call('ZCARD', KEYS[2]))}
for i = 1, 3 do
  out[#out + 1] = fmt(st.cap[i]); out[#out + 1] = fmt(st.rate[i])
  out[#out + 1] = fmt(st.level[i]); out[#out + 1] = fmt(st.learned[i])
end
return out
""")

_BUDGET_PRELUDE = r"""
local function budget(now)
  local b = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'open', 'expired')
  local spent, reserved, open, expired = nz(b[1]), nz(b[2]), nz(b[3]), nz(b[4])
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
  local total = 0
  for _, id in ipairs(ids) do
    total = total + (tonumber(redis.call('HGET', KEYS[3], id)) or 0)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[2], id)
  end
  if #ids > 0 then
    open = open - #ids
    spent = spent + total
    expired = expired + total
    if open > 0 then reserved = math.max(0, reserved - total) else reserved = 0 end
    redis.call('HSET', KEYS[1], 'spent', fmt(spent), 'reserved', fmt(reserved), 'open', tostring(open),
               'expired', fmt(expired))
  end
  return spent, reserved, open, #ids, total
end
"""

# KEYS: budget hash, holds zset, holds data. ARGV: name, cost, cap, ttl, id.
# Returns: granted, spent, reserved, expired count, expired total.
_BUDGET_RESERVE = _lua(
    _BUDGET_PRELUDE
    + r"""
local now = clock()
local spent, reserved, open, n, total = budget(now)
local cost, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'cap', ARGV[3])
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, KEY_TTL) end
if spent + reserved + cost > cap + EPS then
  redis.call('HINCRBY', KEYS[1], 'refused', 1)
  return {'0', fmt(spent), fmt(reserved), tostring(n), fmt(total)}
end
reserved = reserved + cost
redis.call('HSET', KEYS[1], 'reserved', fmt(reserved), 'open', tostring(open + 1))
redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[4])), ARGV[5])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[2])
return {'1', fmt(spent), fmt(reserved), tostring(n), fmt(total)}
"""
)

# KEYS: budget hash, holds zset, holds data. ARGV: id, actual, worst case.
_BUDGET_SETTLE = _lua(r"""
local actual, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local alive = redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'open', 'expired')
local spent, reserved, open, expired = nz(b[1]), nz(b[2]), nz(b[3]), nz(b[4])
if alive == 1 then
  open = open - 1
  spent = spent + actual
  if open > 0 then reserved = math.max(0, reserved - cost) else reserved = 0 end
else
  spent = math.max(0, spent + actual - cost)
  expired = math.max(0, expired - cost)
end
redis.call('HSET', KEYS[1], 'spent', fmt(spent), 'reserved', fmt(reserved), 'open', tostring(open),
           'expired', fmt(expired))
return 1
""")

# KEYS: budget hash, holds zset, holds data. Returns spent, reserved, open, expired, refused, cap, expired now.
_BUDGET_REPORT = _lua(
    _BUDGET_PRELUDE
    + r"""
local spent, reserved, open, n, total = budget(clock())
local b = redis.call('HMGET', KEYS[1], 'expired', 'refused', 'cap')
return {fmt(spent), fmt(reserved), tostring(open), b[1] or '0', b[2] or '0', b[3] or '', tostring(n), fmt(total)}
"""
)

_SCRIPTS = {
    "acquire": _ACQUIRE,
    "settle": _SETTLE,
    "learn": _LEARN,
    "give": _GIVE,
    "pause": _PAUSE,
    "state": _STATE,
    "budget_reserve": _BUDGET_RESERVE,
    "budget_settle": _BUDGET_SETTLE,
    "budget_report": _BUDGET_REPORT,
}


# ------------------------------------------------------------------------------ the store
def _describe(url: str) -> tuple[str, str]:
    """(the URL without credentials, for messages; the password, to redact)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"shared_limits must be a redis://host:port/db URL, got a {parts.scheme or 'schemeless'} URL")
    if parts.scheme == "unix":
        return f"unix://{parts.path}", parts.password or ""
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("shared_limits must be a redis://host:port/db URL: the port is not a number") from None
    return f"{parts.scheme}://{parts.hostname or 'localhost'}:{port}{parts.path or '/0'}", parts.password or ""


def _quiet_connect() -> dict[str, Any]:
    """redis-py >= 8 asks the server for maintenance notifications on every connect: not here."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _vec(values: list[float]) -> list[str]:
    return [repr(float(v)) for v in values]


class RedisStore:
    """The shared store in Redis (see the module docstring). Thread-safe (redis-py's connection
    pool); a forked child opens its own connections.

    ``url``: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix:///path``).
    ``socket_timeout_s``: the longest a call may take before the store counts as lost.
    ``retry_s``: how often an unavailable store is tried again.

    >>> RedisStore("redis://127.0.0.1:6379/0").state(scope).buckets["itpm"].capacity
    120000.0
    """

    kind = "redis"

    def __init__(self, url: str, *, socket_timeout_s: float = 1.0, retry_s: float = 30.0) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a redis://host:port/db str, got {type(url).__name__}")
        self.where, self._secret = _describe(url)
        timeout = check_seconds(socket_timeout_s, "socket_timeout_s")
        self._guard = Guard(f"the redis store {self.where}", check_seconds(retry_s, "retry_s"))
        import redis  # the optional [redis] extra: ImportError when it is not installed
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one try: a lost server must not stall a request
            retry_on_timeout=False,
            health_check_interval=0,
            **_quiet_connect(),
        )
        self._scripts = {name: self._client.register_script(source) for name, source in _SCRIPTS.items()}
        live_stores.add(self)
        self._call(self._client.ping)  # reachable now? (one warning if not)

    def __repr__(self) -> str:
        return f"<RedisStore {self.where}{' (unavailable)' if self._guard.down else ''}>"

    @property
    def available(self) -> bool:
        """False during an outage (every call then answers None)."""
        return not self._guard.down

    def _call(self, fn: Callable[[], Any]) -> Any:
        retried = self._guard.begin()
        if retried is None:
            return None
        try:
            result = fn()
        except self._errors as exc:
            self._guard.failed(exc, self._secret)
            return None
        if self._guard.down:
            self._guard.ok(retried)
        return result

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script; its reply as a list of str fields (or an int), None when unavailable."""
        script = self._scripts[name]
        out = self._call(lambda: script(keys=keys, args=args))
        return out.decode().split(" ") if isinstance(out, bytes) else out

    def _after_fork(self) -> None:
        self._guard.after_fork()  # (redis-py's pool drops the parent's connections by itself)

    def close(self) -> None:
        """Close the connections (the next call opens new ones)."""
        try:
            self._client.connection_pool.disconnect()
        except self._errors:  # pragma: no cover - closing a broken connection
            pass

    @staticmethod
    def _keys(scope: str) -> list[str]:
        return [f"oa:{{{scope}}}:s", f"oa:{{{scope}}}:h", f"oa:{{{scope}}}:hd"]

    @staticmethod
    def _budget_keys(name: str) -> list[str]:
        tag = "b" + hashlib.sha256(name.encode("utf-8", "backslashreplace")).hexdigest()[:32]
        return [f"oa:{{{tag}}}:b", f"oa:{{{tag}}}:h", f"oa:{{{tag}}}:hd"]

    # -------------------------------------------------------------- buckets
    def acquire(
        self,
        scope: str,
        charges: Mapping[str, float],
        *,
        extra: Optional[Mapping[str, float]] = None,
        provisional: Optional[Mapping[str, float]] = None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> Optional[Grant]:
        """See :meth:`_shared_sqlite.SqliteStore.acquire`."""
        check_scope(scope)
        need = amounts(charges, "charges") or [0.0, 0.0, 0.0]
        more = amounts(extra, "extra")
        held = amounts(provisional, "provisional")
        ttl = check_seconds(ttl_s, "ttl_s")
        if held is not None:
            for i in range(3):
                if held[i] > need[i]:
                    raise ValueError(f"provisional[{KINDS[i]!r}] must not exceed charges[{KINDS[i]!r}]")
        hold_id = owner().new_id() if held is not None else ""
        args = [*_vec(need), *_vec(more or [0.0] * 3), *_vec(held or [0.0] * 3), repr(ttl), hold_id]
        args.append("1" if more is not None else "0")
        out = self._script("acquire", self._keys(scope), args)
        if out is None:
            return None
        return _grant(scope, out, hold_id, held)

    def settle(
        self, grant: Grant, *, used: Optional[Mapping[str, float]] = None, adjust: Optional[Mapping[str, float]] = None
    ) -> Optional[bool]:
        """See :meth:`_shared_sqlite.SqliteStore.settle`."""
        check_grant(grant, Grant)
        used_v = amounts(used, "used")
        adjust_v = amounts(adjust, "adjust", signed=True) or [0.0, 0.0, 0.0]
        if grant.reservation is None and adjust is None:
            return True
        held = [grant.provisional.get(k, 0.0) for k in KINDS]
        alive = [a + b for a, b in zip(adjust_v, settle_hold(held, used_v, True))]
        dead = [a + b for a, b in zip(adjust_v, settle_hold(held, used_v, False))]
        out = self._script("settle", self._keys(grant.scope), [grant.reservation or "", *_vec(alive), *_vec(dead)])
        return None if out is None else True

    def give(self, scope: str, amounts_: Mapping[str, float]) -> Optional[bool]:
        """See :meth:`_shared_sqlite.SqliteStore.give`."""
        check_scope(scope)
        delta = amounts(amounts_, "amounts", signed=True)
        if delta is None:
            return True
        return None if self._script("give", self._keys(scope)[:1], _vec(delta)) is None else True

    def learn(
        self,
        scope: str,
        limits: Mapping[str, tuple[float, float]],
        *,
        remaining: Optional[Mapping[str, float]] = None,
        marks: Optional[Mapping[str, float]] = None,
    ) -> Optional[bool]:
        """See :meth:`_shared_sqlite.SqliteStore.learn`."""
        check_scope(scope)
        new = limits_of(limits)
        floors = floors_of(remaining, marks)
        args: list[str] = []
        args += _vec([p[0] if p else 0.0 for p in new]) + _vec([p[1] if p else 60.0 for p in new])
        args += ["1" if f else "0" for f in floors] + _vec([f[0] if f else 0.0 for f in floors])
        args += ["1" if f and f[1] is not None else "0" for f in floors]
        args += _vec([f[1] if f and f[1] is not None else 0.0 for f in floors])
        return None if self._script("learn", self._keys(scope)[:1], args) is None else True

    def pause(self, scope: str, seconds: float) -> Optional[float]:
        """See :meth:`_shared_sqlite.SqliteStore.pause`."""
        check_scope(scope)
        out = self._script("pause", self._keys(scope)[:1], [repr(check_seconds(seconds, "seconds"))])
        return None if out is None else float(out[0])

    def state(self, scope: str) -> Optional[ScopeState]:
        """See :meth:`_shared_sqlite.SqliteStore.state`."""
        check_scope(scope)
        out = self._script("state", self._keys(scope), [])
        if out is None:
            return None
        now, until, holds, *rest = (float(x) for x in out)
        buckets = {}
        for i, kind in enumerate(KINDS):
            cap, rate, level, learned = rest[4 * i : 4 * i + 4]
            if cap > 0:
                buckets[kind] = BucketState(cap, round(cap / rate, 9), level, max(0.0, now - learned))
        return ScopeState(buckets, max(0.0, until - now), int(holds))

    # -------------------------------------------------------------- budgets
    def budget_reserve(
        self, name: str, cost_usd: float, cap_usd: float, *, ttl_s: float = DEFAULT_TTL_S
    ) -> Optional[BudgetGrant]:
        """See :meth:`_shared_sqlite.SqliteStore.budget_reserve`."""
        budget_name(name)
        cost = float(check_number(cost_usd, "cost_usd"))
        cap = float(check_number(cap_usd, "cap_usd"))
        ttl = check_seconds(ttl_s, "ttl_s")
        hold_id = owner().new_id()
        out = self._script("budget_reserve", self._budget_keys(name), [name, repr(cost), repr(cap), repr(ttl), hold_id])
        if out is None:
            return None
        granted, spent, reserved, expired_n, expired_usd = (float(x) for x in out)
        _note_expired(name, int(expired_n), expired_usd)
        return BudgetGrant(granted == 1.0, name, cost, spent, reserved, hold_id if granted == 1.0 else None)

    def budget_settle(self, grant: BudgetGrant, actual_usd: Optional[float]) -> Optional[bool]:
        """See :meth:`_shared_sqlite.SqliteStore.budget_settle`."""
        check_grant(grant, BudgetGrant)
        if not grant.granted or grant.reservation is None:
            return True
        actual = grant.cost_usd if actual_usd is None else float(check_number(actual_usd, "actual_usd"))
        args = [grant.reservation, repr(actual), repr(grant.cost_usd)]
        return None if self._script("budget_settle", self._budget_keys(grant.name), args) is None else True

    def budget_report(self, name: str) -> Optional[BudgetReport]:
        """See :meth:`_shared_sqlite.SqliteStore.budget_report`."""
        budget_name(name)
        out = self._script("budget_report", self._budget_keys(name), [])
        if out is None:
            return None
        _note_expired(name, int(out[6]), float(out[7]))
        cap = float(out[5]) if out[5] else None
        return BudgetReport(name, float(out[0]), float(out[1]), int(out[2]), float(out[3]), int(out[4]), cap)


def _note_expired(name: str, count: int, total: float) -> None:
    if count:
        logger.warning(
            "shared budget %r: %d reservation(s) of a process that never settled them counted as spent at "
            "their worst case ($%.4f)",
            name,
            count,
            total,
        )


def _grant(scope: str, out: list[str], hold_id: str, held: Optional[list[float]]) -> Grant:
    granted, wait, now, paused = out[0] == "1", float(out[1]), float(out[2]), out[3] == "1"
    if len(out) == 4:  # nothing known on the scope
        return Grant(True, 0.0, scope, at=now)
    caps = [float(x) for x in out[4:7]]
    known = [c > 0 for c in caps]
    if paused:
        return Grant(False, wait, scope, at=now, paused=True)
    if not granted:
        levels = [float(x) for x in out[10:13]]
        return Grant(False, wait, scope, levels={KINDS[i]: levels[i] for i in range(3) if known[i]}, at=now)
    taken, levels, cum = ([float(x) for x in out[a : a + 3]] for a in (7, 10, 13))
    made = out[16] == "1"
    return Grant(
        True,
        0.0,
        scope,
        {KINDS[i]: taken[i] for i in range(3) if known[i]},
        {KINDS[i]: levels[i] for i in range(3) if known[i]},
        {KINDS[i]: cum[i] for i in range(3) if known[i]},
        now,
        False,
        hold_id if made else None,
        {KINDS[i]: held[i] for i in range(3) if known[i] and held[i] > 0} if made and held else {},
    )
