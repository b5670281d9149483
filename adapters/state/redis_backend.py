"""The shared backend: every replica's limits, audio ids, transcripts, clones, stored
responses and realtime client secrets in Redis.

KeyAdmission, charges and releases are Lua scripts, so each is one atomic step on the Redis
server whatever number of replicas race; the window is computed from Redis' own clock
(``TIME``), so replicas with skewed clocks still share one window. Every call has a
timeout: a Redis that hangs is an outage like one that refuses, and raises
:class:`StateUnavailable` for the gateway to fail closed or open on.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from adapters.chat.audio_store import AudioStore, StoredAudio
from adapters.chat.transcripts import Transcript, TranscriptCache
from adapters.realtime.secrets import ClientSecret, ClientSecretStore, digest_of
from adapters.responses.store import ResponseStore, StoredResponse

from .base import (
    FIELDS,
    STREAMS,
    WINDOW_SECONDS,
    Charge,
    KeyAdmission,
    Limits,
    StateBackend,
    StateUnavailable,
    VoiceRecords,
)

# KEYS[1]: the owner's counter prefix, KEYS[2]: the owner's open-streams counter.
# ARGV: window seconds, then the limits of requests, tokens, audio in, audio out, streams
# (-1: none), then 1 to count an open stream or 0 not to. Returns {refused index (0: admitted), window, reset ms, counters..., streams}.
_ADMIT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[1]) * 1000
local window = math.floor(now_ms / span)
local key = KEYS[1] .. ':' .. window
local fields = {'requests', 'tokens', 'audio_in_ms', 'audio_out_ms'}
local used = {}
local refused = 0
for i, field in ipairs(fields) do
  used[i] = tonumber(redis.call('HGET', key, field) or '0')
  local limit = tonumber(ARGV[i + 1])
  if refused == 0 and limit >= 0 and used[i] >= limit then refused = i end
end
local streams = tonumber(redis.call('GET', KEYS[2]) or '0')
local stream_limit = tonumber(ARGV[6])
local stream = ARGV[7] == '1'
if refused == 0 and stream and stream_limit >= 0 and streams + 1 > stream_limit then refused = 5 end
if refused == 0 then
  used[1] = redis.call('HINCRBY', key, 'requests', 1)
  redis.call('EXPIRE', key, tonumber(ARGV[1]) * 2)
  if stream then
    streams = redis.call('INCR', KEYS[2])
    redis.call('EXPIRE', KEYS[2], 3600)
  end
end
return {refused, window, span - (now_ms % span), used[1], used[2], used[3], used[4], streams}
"""

# KEYS[1]: counter prefix, KEYS[2]: streams. ARGV: window, refund (0/1).
_RELEASE = """
local streams = tonumber(redis.call('GET', KEYS[2]) or '0')
if streams > 0 then redis.call('DECR', KEYS[2]) end
if ARGV[2] == '1' then
  local key = KEYS[1] .. ':' .. ARGV[1]
  local r = tonumber(redis.call('HGET', key, 'requests') or '0')
  if r > 0 then redis.call('HINCRBY', key, 'requests', -1) end
end
return 1
"""

# KEYS[1]: counter prefix. ARGV: window ('now': the current one, by Redis' clock), field,
# amount, limit (-1: none), partial (0/1), window seconds. Returns {ok, used}.
_CHARGE = """
local window = ARGV[1]
if window == 'now' then
  local t = redis.call('TIME')
  window = tostring(math.floor(tonumber(t[1]) / tonumber(ARGV[6])))
end
local key = KEYS[1] .. ':' .. window
local used = tonumber(redis.call('HGET', key, ARGV[2]) or '0')
local amount = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local ok = 1
if limit >= 0 and used + amount > limit then
  ok = 0
  if ARGV[5] == '1' and used < limit then amount = limit - used else amount = 0 end
end
if amount > 0 then
  used = redis.call('HINCRBY', key, ARGV[2], amount)
  redis.call('EXPIRE', key, tonumber(ARGV[6]) * 2)
end
return {ok, used}
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class _Redis:
    """Runs a call, turning every Redis failure into :class:`StateUnavailable`."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def __call__(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.client, method)(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {exc}") from exc


class RedisAudioStore(AudioStore):
    def __init__(self, call: _Redis) -> None:
        self._call = call

    def _key(self, audio_id: str) -> str:
        return f"{self._call.prefix}:audio:{audio_id}"

    async def put(
        self, audio_id: str, transcript: str, ttl_seconds: int, *, owner: str
    ) -> StoredAudio:
        expires_at = int(await self._now()) + ttl_seconds
        item = StoredAudio(audio_id, transcript, expires_at, owner)
        value = json.dumps({"t": transcript, "e": expires_at, "o": owner})
        await self._call("set", self._key(audio_id), value, max(1, ttl_seconds))
        return item

    async def _now(self) -> float:
        seconds, micros = await self._call("time")
        return seconds + micros / 1e6

    async def get(self, audio_id: str, *, owner: str) -> StoredAudio | None:
        raw = await self._call("get", self._key(audio_id))
        if raw is None:
            return None
        data = json.loads(raw)
        if not hmac.compare_digest(data["o"], owner):
            return None
        return StoredAudio(audio_id, data["t"], data["e"], data["o"])


class RedisResponseStore(ResponseStore):
    """One key per response, expiring with it; the owner is kept beside the record."""

    def __init__(self, call: _Redis) -> None:
        self._call = call

    def _key(self, response_id: str) -> str:
        return f"{self._call.prefix}:response:{response_id}"

    async def put(self, response_id: str, record: bytes, ttl_seconds: int, *, owner: str) -> None:
        value = json.dumps({"o": owner, "r": record.decode()})
        await self._call("set", self._key(response_id), value, max(1, ttl_seconds))

    async def get(self, response_id: str, *, owner: str) -> StoredResponse | None:
        raw = await self._call("get", self._key(response_id))
        if raw is None:
            return None
        data = json.loads(raw)
        if not hmac.compare_digest(data["o"], owner):
            return None
        return StoredResponse(response_id, data["r"].encode(), data["o"])

    async def delete(self, response_id: str, *, owner: str) -> bool:
        if await self.get(response_id, owner=owner) is None:
            return False
        return bool(await self._call("delete", self._key(response_id)))


class RedisClientSecretStore(ClientSecretStore):
    """One key per secret digest, expiring with the secret (Redis drops it then)."""

    def __init__(self, call: _Redis) -> None:
        self._call = call

    def _key(self, secret: str) -> str:
        return f"{self._call.prefix}:ek:{digest_of(secret)}"

    async def put(self, secret: str, record: ClientSecret) -> None:
        seconds, _ = await self._call("time")
        ttl = record.expires_at - int(seconds)
        if ttl <= 0:
            return
        value = json.dumps({"o": record.owner, "s": record.session.decode(), "e": record.expires_at})
        await self._call("set", self._key(secret), value, ttl)

    async def get(self, secret: str) -> ClientSecret | None:
        raw = await self._call("get", self._key(secret))
        if raw is None:
            return None
        data = json.loads(raw)
        return ClientSecret(data["o"], data["s"].encode(), data["e"])


class RedisTranscriptCache(TranscriptCache):
    """Kept a day past its last use: a conversation is replayed within one."""

    TTL_SECONDS = 86_400

    def __init__(self, call: _Redis) -> None:
        self._call = call

    def _key(self, key: str) -> str:
        return f"{self._call.prefix}:transcript:{key}"

    async def get(self, key: str) -> Transcript | None:
        try:
            raw = await self._call("getex", self._key(key), self.TTL_SECONDS)
        except StateUnavailable:
            return None  # a cache: without Redis, the audio is transcribed again
        if raw is None:
            return None
        data = json.loads(raw)
        return Transcript(text=data["text"], seconds=data["seconds"])

    async def put(self, key: str, transcript: Transcript) -> None:
        value = json.dumps({"text": transcript.text, "seconds": transcript.seconds})
        try:
            await self._call("set", self._key(key), value, self.TTL_SECONDS)
        except StateUnavailable:
            pass


class RedisVoiceRecords(VoiceRecords):
    def __init__(self, call: _Redis) -> None:
        self._call = call
        self._key = f"{call.prefix}:voices"

    async def put(self, engine_id: str, owner: str, name: str) -> None:
        await self._call("hset", self._key, engine_id, json.dumps([owner, name]))

    async def delete(self, engine_id: str) -> None:
        await self._call("hdel", self._key, engine_id)

    async def all(self) -> dict[str, tuple[str, str]]:
        raw = await self._call("hgetall", self._key)
        return {k: tuple(json.loads(v)) for k, v in raw.items()}


class RedisBackend(StateBackend):
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "sag", timeout_seconds: float = 0.5) -> None:
        self.client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.prefix = prefix
        self._call = _Redis(self.client, prefix)
        self._admit = self.client.register_script(_ADMIT)
        self._release = self.client.register_script(_RELEASE)
        self._charge = self.client.register_script(_CHARGE)
        self.audio_store = RedisAudioStore(self._call)
        self.transcripts = RedisTranscriptCache(self._call)
        self.voices = RedisVoiceRecords(self._call)
        self.responses = RedisResponseStore(self._call)
        self.client_secrets = RedisClientSecretStore(self._call)

    def _keys(self, owner: str) -> list[str]:
        return [f"{self.prefix}:rl:{owner}", f"{self.prefix}:streams:{owner}"]

    async def _script(self, script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {exc}") from exc

    async def admit(self, owner: str, limits: Limits, *, stream: bool = True) -> KeyAdmission:
        args = [WINDOW_SECONDS, *(_limit(limits.of(f)) for f in FIELDS), _limit(limits.streams)]
        args.append(int(stream))
        result = await self._script(self._admit, self._keys(owner), args)
        refused_index, window, reset_ms, *counters = (int(v) for v in result)
        names = (*FIELDS, STREAMS)
        refused = names[refused_index - 1] if refused_index else None
        return KeyAdmission(refused, dict(zip(names, counters)), reset_ms, window)

    async def release(self, owner: str, admission: KeyAdmission, *, refund: bool) -> None:
        await self._script(self._release, self._keys(owner), [admission.window, int(refund)])

    async def charge(
        self,
        owner: str,
        window: int | None,
        field: str,
        amount: int,
        limit: int | None,
        *,
        partial: bool,
    ) -> Charge:
        ok, used = await self._script(
            self._charge,
            self._keys(owner)[:1],
            ["now" if window is None else window, field, amount, _limit(limit), int(partial),
             WINDOW_SECONDS],
        )
        return Charge(bool(int(ok)), int(used))

    async def ping(self) -> None:
        await self._call("ping")

    async def close(self) -> None:
        await self.client.aclose()
