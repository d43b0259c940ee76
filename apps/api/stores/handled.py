"""Requests already handled, kept in the database so that a retry (GitHub redelivering a webhook,
a publisher retrying with the same ``Idempotency-Key``) publishes nothing twice, across restarts
and instances.

``async with handled.once(kind, key, body) as claim:``: when ``claim.previous`` is None this is the
first time; do the work and set ``claim.result`` (what to answer a retry). It is recorded when the
block ends without an exception; an exception records nothing, so a retry does the work again.
A retry that arrives while the first is being handled waits for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.api.db.engine import writer
from apps.api.db.tables import handled_requests

#: How long a handled request is remembered (GitHub lets a delivery be redelivered for 3 days).
KEEP = timedelta(days=30)


@dataclass
class Claim:
    #: What the first request was answered (None: this is the first).
    previous: dict[str, Any] | None
    #: Whether the first request's body was the same as this one's.
    same_request: bool = True
    result: dict[str, Any] = field(default_factory=dict)


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class HandledRequests:
    def __init__(self, engine: AsyncEngine) -> None:
        self._writer = writer(engine)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._insert = insert(handled_requests)

    @asynccontextmanager
    async def once(self, kind: str, key: str, body: bytes) -> AsyncIterator[Claim]:
        digest = fingerprint(body)
        where = (handled_requests.c.kind == kind, handled_requests.c.key == key)
        async with self._writer.begin() as connection:
            # waits for a concurrent first attempt's transaction, then inserts nothing
            stmt = self._insert.values(
                kind=kind, key=key, fingerprint=digest, result="", created_at=datetime.now(UTC)
            ).on_conflict_do_nothing()
            inserted = (await connection.execute(stmt)).rowcount == 1
            if not inserted:
                row = (await connection.execute(select(handled_requests).where(*where))).one()
                yield Claim(previous=json.loads(row.result), same_request=row.fingerprint == digest)
                return
            claim = Claim(previous=None)
            yield claim
            await connection.execute(update(handled_requests).where(*where).values(result=json.dumps(claim.result)))

    async def forget_older_than(self, age: timedelta = KEEP) -> int:
        async with self._writer.begin() as connection:
            result = await connection.execute(
                delete(handled_requests).where(handled_requests.c.created_at < datetime.now(UTC) - age)
            )
        return int(result.rowcount)
