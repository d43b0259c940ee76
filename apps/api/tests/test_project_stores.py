"""The project store and the handled-requests table, the same tests on SQLite (the default) and on
PostgreSQL (the machine's server): what they store, and what they do under concurrent writers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.api.db.engine import create_engine
from apps.api.db.migrate import upgrade
from apps.api.stores.handled import HandledRequests
from apps.api.stores.projects import InvalidCursor, ProjectBusy, ProjectNotFound
from apps.api.stores.sql_projects import SqlProjectStore
from apps.api.tests.postgres_support import prepared_postgres
from apps.api.tests.support import sqlite_url

ROUNDS = 20


async def publish(log: list[str], entry: str) -> None:
    """Stands for a broadcast after a commit: it gives the event loop to others (as a Redis round
    trip does) before the entry is logged."""
    for _ in range(10):
        await asyncio.sleep(0)
    log.append(entry)


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = create_engine(sqlite_url())
        await upgrade(engine)
    else:
        engine = create_engine(await prepared_postgres())
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> SqlProjectStore:
    return SqlProjectStore(engine)


async def test_create_get_and_list_in_pages(store: SqlProjectStore):
    owner = uuid4()
    created = [await store.create(name=f"p{i}", owner_id=owner, status="active") for i in range(5)]
    first = created[0]
    assert await store.get(first.id) == first
    assert first.members == {owner}
    assert await store.get(uuid4()) is None

    seen, cursor, pages = [], None, 0
    while True:
        page = await store.list_for_user(owner, limit=2, cursor=cursor)
        seen += [p.id for p in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [p.id for p in created] and pages == 3
    assert (await store.list_for_user(uuid4())).items == []
    with pytest.raises(InvalidCursor):
        await store.list_for_user(owner, cursor="not-a-cursor")


async def test_members_are_added_listed_and_removed(store: SqlProjectStore):
    owner, member = uuid4(), uuid4()
    project = await store.create(name="p", owner_id=owner)
    assert await store.is_member(project.id, owner) and not await store.is_member(project.id, member)
    async with store.editing(project.id) as edit:
        assert await edit.add_member(member) is True
        assert await edit.add_member(member) is False
    assert await store.is_member(project.id, member)
    assert [(m.user_id, m.role) for m in await store.members(project.id)] == [(owner, "owner"), (member, "member")]
    assert [p.id for p in (await store.list_for_user(member)).items] == [project.id]
    async with store.editing(project.id) as edit:
        with pytest.raises(ValueError, match="owner"):
            await edit.remove_member(owner)
        assert await edit.remove_member(member) is True
        assert await edit.remove_member(member) is False
    assert not await store.is_member(project.id, member)
    assert (await store.get(project.id)).members == {owner}


async def test_update_reports_only_what_changed(store: SqlProjectStore):
    project = await store.create(name="p", owner_id=uuid4())
    async with store.editing(project.id) as edit:
        changed = await edit.update({"name": "p", "status": "archived", "owner_id": "x"})
    assert changed == {"status": "archived"}
    stored = await store.get(project.id)
    assert stored.status == "archived" and stored.owner_id == project.owner_id
    assert stored.updated_at >= project.updated_at
    async with store.editing(project.id) as edit:
        assert await edit.update({"status": "archived"}) == {}


async def test_an_exception_in_the_block_stores_nothing(store: SqlProjectStore):
    project = await store.create(name="p", owner_id=uuid4())
    with pytest.raises(RuntimeError):
        async with store.editing(project.id) as edit:
            await edit.update({"name": "changed"})
            await edit.add_member(uuid4())
            raise RuntimeError("refused")
    assert await store.get(project.id) == project


async def test_a_project_is_found_by_any_form_of_its_repository_url(store: SqlProjectStore):
    name = uuid4().hex[:10]
    project = await store.create(name="p", owner_id=uuid4(), repository_url=f"https://github.com/Acme/{name}")
    for form in (f"git@github.com:acme/{name}.git", f"https://github.com/ACME/{name}.git", f"acme/{name}"):
        from apps.api.github.events import normalize_repository

        key = normalize_repository(form)
        assert key is not None
        assert [p.id for p in await store.for_repository(frozenset({key}))] == [project.id], form
    async with store.editing(project.id) as edit:
        await edit.update({"repository_url": f"https://github.com/acme/{name}-moved"})
    assert await store.for_repository(frozenset({f"github.com/acme/{name}"})) == []


async def test_concurrent_updates_of_different_fields_lose_nothing(store: SqlProjectStore):
    project = await store.create(name="p", owner_id=uuid4())
    members = [uuid4() for _ in range(ROUNDS)]

    async def change(i: int) -> None:
        async with store.editing(project.id) as edit:
            await edit.add_member(members[i])
            if i % 4 == 0:
                await edit.update({"name": f"name {i}"})
            elif i % 4 == 1:
                await edit.update({"description": f"description {i}"})
            elif i % 4 == 2:
                await edit.update({"status": f"status {i}"})
            else:
                await edit.update({"repository_url": f"https://github.com/a/r{i}"})

    await asyncio.gather(*(change(i) for i in range(ROUNDS)))
    stored = await store.get(project.id)
    assert stored.members == {project.owner_id, *members}
    assert stored.name.startswith("name ") and stored.description.startswith("description ")
    assert stored.status.startswith("status ") and stored.repository_url.startswith("https://github.com/a/r")


async def test_changes_racing_a_delete_fail_cleanly_and_are_never_announced_after_it(store: SqlProjectStore):
    """Each change 'publishes' (appends to a log) after its commit, inside the block, as the routes
    do. The first update's publish is slow: it waits (0.1 s at most) for the delete, which must not
    overtake it. No change is stored or announced once the delete has been."""
    for _ in range(5):
        await race_a_delete(store)


async def race_a_delete(store: SqlProjectStore) -> None:
    project = await store.create(name="p", owner_id=uuid4())
    log: list[str] = []
    outcomes: list[str] = []
    deleted, holding = asyncio.Event(), asyncio.Event()

    async def update(i: int) -> None:
        try:
            async with store.editing(project.id) as edit:
                if i == 1:
                    holding.set()
                changed = await edit.update({"name": f"n{i}"})
                await edit.add_member(uuid4())
                await edit.commit()
                if i == 1:  # a slow broadcast: the delete would overtake it here without the lock
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(deleted.wait(), 0.1)
                await publish(log, f"updated {sorted(changed)}")
            outcomes.append("stored")
        except ProjectNotFound:
            outcomes.append("404")

    async def delete() -> None:
        async with store.editing(project.id) as edit:
            await edit.delete()
            await edit.commit()
            await publish(log, "deleted")
        deleted.set()

    first = asyncio.create_task(update(1))
    await asyncio.wait_for(holding.wait(), 5)  # the first update has the project
    await asyncio.gather(first, delete(), update(2), update(3))
    assert log.count("deleted") == 1
    assert "updated" not in " ".join(log[log.index("deleted") :]), log
    assert outcomes.count("stored") == log.index("deleted")  # what was announced is what was stored
    assert await store.get(project.id) is None
    with pytest.raises(ProjectNotFound):
        async with store.editing(project.id):
            pass


async def test_writers_queued_behind_a_slow_change_hold_no_connection(store: SqlProjectStore, engine: AsyncEngine):
    """While one change of a project is slow (its broadcast waits on Redis, say), more writers than
    the pool has connections queue for that project, and the rest of the service keeps working:
    another project can still be changed, and only the slow change holds a connection."""
    waiting_writers = 50  # more than the pool's connections and overflow (10 + 10)
    slow, other = await store.create(name="slow", owner_id=uuid4()), await store.create(name="o", owner_id=uuid4())
    holding, release = asyncio.Event(), asyncio.Event()
    added = [uuid4() for _ in range(waiting_writers)]

    async def hold() -> None:
        async with store.editing(slow.id) as edit:
            await edit.update({"name": "held"})
            await edit.commit()
            holding.set()
            await asyncio.wait_for(release.wait(), 30)

    async def add(user_id) -> None:
        async with store.editing(slow.id) as edit:
            await edit.add_member(user_id)

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(holding.wait(), 5)
    queued = [asyncio.create_task(add(user_id)) for user_id in added]
    try:
        async with asyncio.timeout(10):  # the pool's own timeout is 30 s: this fails if they took it
            async with store.editing(other.id) as edit:
                await edit.update({"status": "unaffected"})
            assert engine.pool.checkedout() == 1, "only the slow change holds a connection"
    finally:
        release.set()
    await asyncio.wait_for(asyncio.gather(holder, *queued), 30)
    stored = await store.get(slow.id)
    assert stored.members == {slow.owner_id, *added} and stored.name == "held"
    assert (await store.get(other.id)).status == "unaffected"


async def test_a_writer_waits_a_bounded_time_for_another_instance(engine: AsyncEngine):
    """Two stores on one database stand for two instances: a change waits for the other's lock at
    most its wait, then gives up with ProjectBusy (503), holding nothing; it succeeds once the lock
    is free. (On SQLite the lock is the process's own; on PostgreSQL an advisory lock.)"""
    first = SqlProjectStore(engine, lock_wait_seconds=0.2)
    # on SQLite (one process) the second "instance" is the same store: its lock is the process's
    second = SqlProjectStore(engine, lock_wait_seconds=0.2) if engine.dialect.name == "postgresql" else first
    project = await first.create(name="p", owner_id=uuid4())
    async with first.editing(project.id) as edit:
        await edit.update({"name": "first"})
        await edit.commit()
        with pytest.raises(ProjectBusy) as refused:
            async with second.editing(project.id) as other:
                await other.update({"name": "second"})
        assert refused.value.project_id == project.id
        assert (await first.get(project.id)).name == "first"
    async with second.editing(project.id) as other:
        await other.update({"name": "second"})
    assert (await first.get(project.id)).name == "second"
    assert engine.pool.checkedout() == 0


async def test_a_handled_request_is_handled_once(engine: AsyncEngine):
    handled = HandledRequests(engine)
    key = uuid4().hex
    async with handled.once("github", key, b"body") as claim:
        assert claim.previous is None
        claim.result = {"events": ["a"]}
    async with handled.once("github", key, b"body") as again:
        assert again.previous == {"events": ["a"]} and again.same_request
    async with handled.once("github", key, b"other body") as different:
        assert not different.same_request
    async with handled.once("another kind", key, b"body") as other_kind:
        assert other_kind.previous is None


async def test_a_failed_attempt_is_not_recorded_and_concurrent_retries_run_once(engine: AsyncEngine):
    handled = HandledRequests(engine)
    key = uuid4().hex
    with pytest.raises(RuntimeError):
        async with handled.once("publish:x", key, b"b"):
            raise RuntimeError("Redis was down")
    firsts: list[int] = []

    async def attempt(i: int) -> None:
        async with handled.once("publish:x", key, b"b") as claim:
            if claim.previous is None:
                firsts.append(i)
                claim.result = {"event_id": str(i)}

    await asyncio.gather(*(attempt(i) for i in range(10)))
    assert len(firsts) == 1
