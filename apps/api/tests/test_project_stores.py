"""The same contract over both project stores: in memory, and Redis (shared by instances)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis import asyncio as aioredis

from apps.api.stores.projects import InMemoryProjectStore, ProjectStore
from apps.api.stores.redis_projects import RedisProjectStore
from apps.api.tests.redis_support import delete_prefix, isolation


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[ProjectStore]:
    if request.param == "memory":
        yield InMemoryProjectStore()
        return
    prefix = isolation()["REDIS_KEY_PREFIX"]
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield RedisProjectStore(client, prefix=prefix)
    finally:
        await client.aclose()
        await delete_prefix(redis_url, prefix)


async def test_create_get_list(store: ProjectStore):
    owner = uuid4()
    first = await store.create(name="one", owner_id=owner, repository_url="https://github.com/u/one")
    second = await store.create(name="two", owner_id=owner, status="paused")
    assert await store.get(first.id) == first
    assert [p.id for p in await store.list_for_user(owner)] == [first.id, second.id]
    assert await store.list_for_user(uuid4()) == []
    assert first.members == {owner}
    assert await store.get(uuid4()) is None


async def test_membership(store: ProjectStore):
    owner, member = uuid4(), uuid4()
    project = await store.create(name="p", owner_id=owner)
    assert await store.is_member(project.id, owner)
    assert not await store.is_member(project.id, member)
    updated = await store.add_member(project.id, member)
    assert updated.members == {owner, member}
    assert await store.is_member(project.id, member)
    assert [p.id for p in await store.list_for_user(member)] == [project.id]


async def test_update_reports_only_real_changes(store: ProjectStore):
    project = await store.create(name="p", owner_id=uuid4())
    updated, changed = await store.update(project.id, {"name": "p", "status": "archived", "owner_id": "x"})
    assert changed == {"status": "archived"}
    assert updated.status == "archived" and updated.owner_id == project.owner_id
    assert updated.updated_at >= project.updated_at
    assert (await store.get(project.id)) == updated
    _, nothing = await store.update(project.id, {"status": "archived"})
    assert nothing == {}


async def test_delete(store: ProjectStore):
    owner, member = uuid4(), uuid4()
    project = await store.create(name="p", owner_id=owner)
    await store.add_member(project.id, member)
    assert (await store.delete(project.id)) is not None
    assert await store.get(project.id) is None
    assert not await store.is_member(project.id, member)
    assert await store.list_for_user(member) == []
    assert await store.delete(project.id) is None
