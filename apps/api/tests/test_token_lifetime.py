"""A connection never outlives its token: warned (``token.expiring``), then closed at expiry, told
why (``connection.closing``); or handed a fresh token on the open connection (``auth:refresh``),
keeping its rooms. Against a real server and python-socketio clients."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import jwt

from apps.api.app import create_app
from apps.api.tests.support import TEST_SECRET, WsClient, make_token, marker, serve_in_process
from apps.api.tests.support import test_settings as settings_for  # (not named test_*: not collected)


async def test_a_connection_is_warned_then_closed_at_expiry_and_a_refreshed_one_stays():
    """Two connections whose tokens expire at the same moment, 3 s from now: the one that hands a
    fresh token over stays connected, in its rooms, after the other was closed at that moment."""
    app = create_app(settings_for(token_expiry_warning_seconds=2))
    async with serve_in_process(app) as server:
        user = uuid4()
        short = make_token(user, ttl=3)
        stays, goes = WsClient(server.url), WsClient(server.url)
        try:
            await stays.connect(short)
            await goes.connect(short)
            agent = f"agent:{uuid4()}"
            assert (await stays.call("subscribe", {"room": agent}))["status"] == "success"

            warning = await goes.expect("token.expiring", timeout=5)
            assert warning["type"] == "token.expiring" and 0 <= warning["data"]["seconds_left"] <= 2
            assert (await stays.expect("token.expiring", timeout=5))["data"]["expires_at"] == warning["data"][
                "expires_at"
            ]

            answer = await stays.call("auth:refresh", {"token": make_token(user, ttl=600)})
            assert answer["status"] == "success" and answer["left_rooms"] == []
            assert answer["expires_at"] > warning["data"]["expires_at"]

            closing = await goes.expect("connection.closing", timeout=8)
            assert closing["data"]["reason"] == "token_expired"
            await asyncio.wait_for(goes.disconnected.wait(), 5)

            assert stays.sio.connected
            assert agent in (await stays.call("debug:rooms"))["rooms"]
            await marker(stays)
            assert stays.received("connection.closing") == []
        finally:
            await stays.close()
            await goes.close()


async def test_a_refresh_is_refused_with_its_reason_and_the_connection_keeps_its_token(connect):
    user = uuid4()
    client = await connect(make_token(user))
    cases = {
        "other_user": make_token(uuid4()),
        "expired": make_token(user, ttl=-60),
        "malformed": "not-a-jwt",
        "bad_signature": make_token(user, secret="another-secret-" + "x" * 32),
        "invalid_claim": jwt.encode({"sub": str(user), "exp": time.time() + 600, "roles": "admin"}, TEST_SECRET),
    }
    for reason, token in cases.items():
        answer = await client.call("auth:refresh", {"token": token})
        assert (answer["status"], answer["code"], answer["reason"]) == ("error", "AUTH_FAILED", reason), answer
        assert token not in str(answer)
    for bad in (None, "a string", {"token": 5}, {}):
        assert (await client.call("auth:refresh", bad))["code"] == "INVALID_REQUEST"
    assert (await client.call("ping"))["status"] == "pong"


async def test_a_refresh_that_drops_a_role_leaves_the_rooms_it_allowed(connect):
    admin_user, other = uuid4(), uuid4()
    client = await connect(make_token(admin_user, roles=["admin"]))
    assert (await client.call("subscribe", {"room": f"user:{other}"}))["status"] == "success"
    before = (await client.call("debug:rooms"))["rooms"]
    assert "role:admin" in before and f"user:{other}" in before

    answer = await client.call("auth:refresh", {"token": make_token(admin_user)})
    assert answer["status"] == "success"
    assert sorted(answer["left_rooms"]) == sorted(["role:admin", f"user:{other}"])
    assert sorted((await client.call("debug:rooms"))["rooms"]) == sorted(["global", f"user:{admin_user}"])
    refused = await client.call("subscribe", {"room": f"user:{other}"})
    assert refused["code"] == "ROOM_ACCESS_DENIED"
