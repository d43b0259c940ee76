"""The request translation (environ.py): the client's address, and a body read with a cap."""

from __future__ import annotations

from typing import Any

import pytest

from apps.transport.environ import BodyIncomplete, BodyTooLarge, translate_request


def receiver(*events: dict[str, Any]) -> Any:
    queue = list(events)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def scope(**extra: Any) -> dict[str, Any]:
    return {"type": "http", "path": "/socket.io/", "query_string": b"EIO=4", "headers": [], **extra}


async def test_remote_addr_is_the_clients_address():
    environ = await translate_request(scope(client=("203.0.113.7", 4242)), receiver({"type": "http.request"}), None)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "4242")


async def test_a_request_whose_client_left_first_translates_to_nothing():
    assert await translate_request(scope(), receiver({"type": "http.disconnect"}), None) == {}


async def test_a_body_is_read_whole_within_the_cap():
    chunks = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"}]
    environ = await translate_request(scope(), receiver(*chunks), None)
    assert await environ["wsgi.input"].read_capped(4) == b"abcd"


async def test_a_body_over_the_cap_is_refused_without_reading_the_rest():
    endless = [{"type": "http.request", "body": b"x" * 10, "more_body": True}] * 2  # a 3rd read would fail
    environ = await translate_request(scope(), receiver(*endless), None)
    with pytest.raises(BodyTooLarge):
        await environ["wsgi.input"].read_capped(15)
    environ = await translate_request(scope(), receiver({"type": "http.request"}), None)
    with pytest.raises(BodyTooLarge):
        await environ["wsgi.input"].read_capped(15, content_length="16")


async def test_a_body_abandoned_midway_or_a_bad_length_is_an_error():
    chunks = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]
    environ = await translate_request(scope(), receiver(*chunks), None)
    with pytest.raises(BodyIncomplete):
        await environ["wsgi.input"].read_capped(100)
    environ = await translate_request(scope(), receiver({"type": "http.request"}), None)
    with pytest.raises(ValueError):
        await environ["wsgi.input"].read_capped(100, content_length="lots")
