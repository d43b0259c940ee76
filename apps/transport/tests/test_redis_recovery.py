"""RedisRecovery against a real Redis: the publish script (one stream entry and one channel
message per event, a retry of the same event a no-op), the history's coverage, and the sessions'
owner check and lifetime."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from apps.transport.recovery import Session
from apps.transport.redis_recovery import RedisRecovery, recorded_body, recorded_message

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEAD = '2/ws,["e",'


@pytest.fixture
async def recovery() -> AsyncIterator[RedisRecovery]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    prefix = f"transport-test-{uuid.uuid4().hex}:"
    made = RedisRecovery(
        client, stream=f"{prefix}history", sessions_prefix=f"{prefix}session:", window=2, max_events=1000
    )
    try:
        yield made
    finally:
        await made.close()
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def publish(recovery: RedisRecovery, channel: str, n: int, key: str = "") -> str:
    body = recorded_body(HEAD, json.dumps({"n": n}))
    return await recovery.publish(
        channel, body, "/ws", "room", recorded_message("emit_packet", body, "/ws", "room", "h"), key
    )


async def test_an_event_published_again_with_its_key_is_taken_once(recovery: RedisRecovery):
    channel = f"transport-test-{uuid.uuid4().hex}"
    listener = recovery.client.pubsub()
    await listener.subscribe(channel)
    try:
        first = await publish(recovery, channel, 1, key="event-1")
        again = await publish(recovery, channel, 1, key="event-1")  # a retry after a lost answer
        other = await publish(recovery, channel, 2, key="event-2")
        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 2:
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    messages.append(json.loads(message["data"]))
        assert await listener.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    finally:
        await listener.aclose()
    assert again == "duplicate" and first != other
    assert [m["offset"] for m in messages] == [first, other]
    assert messages[0]["packet"] == f'{HEAD}{{"n": 1,"offset":"{first}"}},"{first}"]'  # in the envelope too
    missed = await recovery.since("/ws", "0-0", ["room"])
    assert missed is not None and [event.packet for event in missed] == [m["packet"] for m in messages]


async def test_coverage_is_the_offset_still_being_in_the_history(recovery: RedisRecovery):
    channel = f"transport-test-{uuid.uuid4().hex}"
    assert await recovery.covers("0-0")  # nothing was ever added
    offsets = [await publish(recovery, channel, n) for n in range(3)]
    assert await recovery.covers(offsets[0]) and await recovery.last() == offsets[-1]
    assert not await recovery.covers("1-0")  # not an entry of this history
    assert not await recovery.covers("garbage")
    missed = await recovery.since("/ws", offsets[0], ["room"])
    assert missed is not None and len(missed) == 2
    assert await recovery.since("/ws", offsets[0], ["another room"]) == []


async def test_a_session_is_taken_by_one_connection_and_a_late_close_of_the_old_one_is_ignored(
    recovery: RedisRecovery,
):
    await recovery.open(Session("p1", "s1", "/ws", "0-0", rooms=["a"], data={"user": "u"}))
    await recovery.rooms_changed("p1", ["a", "b"])
    taken = await recovery.take("p1", "s2")  # recovered elsewhere while s1 still looked open
    assert taken is not None and taken.rooms == ["a", "b"] and taken.data == {"user": "u"}
    await recovery.closed("p1", "s1", [], recoverable=False)  # the old connection goes, late
    kept = await recovery.session("p1")
    assert kept is not None and kept.sid == "s2"
    await recovery.closed("p1", "s2", ["a"], recoverable=True)
    gone = await recovery.session("p1")
    assert gone is not None and gone.gone_at is not None and gone.rooms == ["a"]
    ttl = await recovery.client.pttl(recovery.sessions_prefix + "p1")
    assert 0 < ttl <= 2000  # kept for the window
    await recovery.closed("p1", "s2", [], recoverable=False)  # not holding it: nothing
    await recovery.open(Session("p3", "s3", "/ws", "0-0"))
    await recovery.closed("p3", "s3", [], recoverable=False)
    assert await recovery.session("p3") is None
