"""What every instance holds, for ``GET /api/v1/websocket/stats``: connections, users and room
sizes, per instance and across the cluster.

With Redis, each instance writes a snapshot of its numbers every ``WEBSOCKET_STATS_INTERVAL_SECONDS``
(5 s) to the key ``<REDIS_KEY_PREFIX>instances:<instance id>``, kept three intervals (so one late
write does not drop an instance), and its id to the set ``<REDIS_KEY_PREFIX>instances``. A stats
request takes the answering instance's numbers as they are now (and writes them), then reads every
live snapshot in one script, which also forgets the ids whose snapshot has expired. So the answering
instance's numbers are current, another's are at most one interval old (each says its
``age_seconds``), and an instance that stopped without saying so (killed) drops out within three
intervals; one that stops cleanly deletes its snapshot at once.

Without Redis the answer is this instance's numbers, with ``"cluster": false``; the same while Redis
is unreachable, with ``"redis": "unreachable"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, TimeoutError)

#: Every live snapshot; the ids whose snapshot has expired are taken out of the set.
_READ_SNAPSHOTS = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local snapshot = redis.call('GET', ARGV[1] .. id)
  if snapshot then
    table.insert(out, snapshot)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""


@dataclass
class InstanceStats:
    """One instance's numbers. ``user_ids``: its distinct users, so that the cluster's users are
    counted once however many instances they are connected to (not shown per instance)."""

    id: str
    connections: int
    users: int
    rooms: dict[str, int]
    user_ids: list[str] = field(default_factory=list)
    updated_at: float = field(default_factory=time.time)

    def public(self, *, this: str, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "this_instance": self.id == this,
            "connections": self.connections,
            "users": self.users,
            "rooms": self.rooms,
            "updated_at": datetime.fromtimestamp(self.updated_at, UTC).isoformat().replace("+00:00", "Z"),
            "age_seconds": round(max(now - self.updated_at, 0.0), 3),
        }


class ClusterStats:
    """This instance's snapshot writer and the cluster's reader. ``local()`` gives this instance's
    numbers now; ``client`` is the Redis the instances share (None: this instance only)."""

    def __init__(
        self, local: Callable[[], InstanceStats], *, client: Any = None, prefix: str = "", interval: float = 5.0
    ) -> None:
        self._local = local
        self._client = client
        self._interval = interval
        self._ttl_ms = max(int(interval * 3000), 1)
        self._index = f"{prefix}instances"
        self._key_prefix = f"{prefix}instances:"
        self._read = client.register_script(_READ_SNAPSHOTS) if client is not None else None
        self._writer: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def interval(self) -> float:
        return self._interval

    def start(self) -> None:
        """Write this instance's snapshot now and then every interval (with Redis only)."""
        if self._client is not None and self._writer is None:
            self._writer = asyncio.ensure_future(self._write_every_interval())

    async def stop(self) -> None:
        """Stop writing and delete this instance's snapshot (it leaves the stats at once)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        own = self._local().id
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key_prefix + own)
                pipe.srem(self._index, own)
                await pipe.execute()
        except _ERRORS:
            pass  # it expires on its own

    async def _write_every_interval(self) -> None:
        while True:
            try:
                await self._write(self._local())
                if self._failing:
                    self._failing = False
                    logger.info("websocket stats: writing this instance's snapshot to Redis again")
            except _ERRORS as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "websocket stats: this instance's snapshot could not be written to Redis (%s); "
                        "retrying every %.1f s",
                        type(exc).__name__,
                        self._interval,
                    )
            await asyncio.sleep(self._interval)

    async def _write(self, stats: InstanceStats) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key_prefix + stats.id, json.dumps(asdict(stats), separators=(",", ":")), px=self._ttl_ms)
            pipe.sadd(self._index, stats.id)
            await pipe.execute()

    async def collect(self) -> dict[str, Any]:
        """The stats of every live instance, summed; this instance's alone without Redis."""
        here = self._local()
        instances = [here]
        redis_state = "not_configured"
        if self._client is not None and self._read is not None:
            try:
                await self._write(here)
                raw = await self._read(keys=[self._index], args=[self._key_prefix])
                others = [_parse(item) for item in raw]
                instances += [s for s in others if s is not None and s.id != here.id]
                redis_state = "ok"
            except _ERRORS as exc:
                logger.warning("websocket stats: Redis unreachable (%s): answering with this instance only", exc)
                redis_state = "unreachable"
        return _summary(here.id, instances, cluster=redis_state == "ok", redis=redis_state, interval=self._interval)


def _parse(raw: Any) -> InstanceStats | None:
    try:
        data = json.loads(raw)
        return InstanceStats(
            id=str(data["id"]),
            connections=int(data["connections"]),
            users=int(data["users"]),
            rooms={str(k): int(v) for k, v in data["rooms"].items()},
            user_ids=[str(u) for u in data.get("user_ids", [])],
            updated_at=float(data["updated_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # written by another version: left out rather than failing the request


def _summary(
    this: str, instances: list[InstanceStats], *, cluster: bool, redis: str, interval: float
) -> dict[str, Any]:
    now = time.time()
    rooms: dict[str, int] = {}
    users: set[str] = set()
    for stats in instances:
        users.update(stats.user_ids)
        for room, size in stats.rooms.items():
            rooms[room] = rooms.get(room, 0) + size
    instances = sorted(instances, key=lambda s: (s.id != this, s.id))
    return {
        "cluster": cluster,
        "redis": redis,
        "instance_id": this,
        "connections": sum(s.connections for s in instances),
        "users": len(users),
        "rooms": dict(sorted(rooms.items())),
        "instances": [s.public(this=this, now=now) for s in instances],
        "refresh_seconds": interval if cluster else None,
    }
