"""Keys from an identity provider's JWKS URL and from a key file, against a real server: tokens
signed with RS256/ES256 keys connect; a key rotated in is picked up on its first token; made-up
kids cost at most one fetch per interval; a JWKS endpoint that hangs costs a bounded wait; a key
file that changes is read again. The JWKS is served by a real HTTP server in the test."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apps.api.app import create_app
from apps.api.tests.support import (
    TEST_SECRET,
    ConnectRefused,
    WsClient,
    bound_socket,
    free_port,
    serve_in_process,
    sqlite_url,
    start_server_process,
)
from apps.api.tests.support import test_settings as settings_for  # (not named test_*: not collected)


def rs256_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private: Any, algorithm: str, kid: str) -> dict[str, Any]:
    as_jwk = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(private.public_key())  # type: ignore[attr-defined]
    return {**json.loads(as_jwk), "kid": kid, "use": "sig", "alg": algorithm}


def signed(private: Any, algorithm: str, kid: str | None = None, **claims: Any) -> str:
    payload = {"sub": str(uuid4()), "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, private, algorithm=algorithm, headers={"kid": kid} if kid else None)


class JwksServer:
    """Serves ``keys`` at /jwks and counts the requests; /hang never answers."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.url = ""

    async def jwks(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})

    async def hang(self, _: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@asynccontextmanager
async def jwks_server() -> AsyncIterator[JwksServer]:
    served = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks", served.jwks)
    app.router.add_get("/hang", served.hang)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    sock = bound_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    served.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield served
    finally:
        await runner.cleanup()


async def connects(url: str, token: str) -> bool:
    client = WsClient(url)
    try:
        await client.connect(token)
        return True
    except ConnectRefused as refused:
        return refused.data["data"]["content"]["reason"]  # type: ignore[no-any-return]
    finally:
        await client.close()


async def test_tokens_from_an_identity_providers_jwks_connect_and_a_rotated_key_is_picked_up():
    first, second = rs256_key(), ec.generate_private_key(ec.SECP256R1())
    async with jwks_server() as provider:
        provider.keys = [public_jwk(first, "RS256", "k1")]
        settings = settings_for(jwt_jwks_url=f"{provider.url}/jwks", jwt_jwks_min_interval_seconds=60)
        async with serve_in_process(create_app(settings)) as server, httpx.AsyncClient(base_url=server.url) as http:
            token = signed(first, "RS256", "k1")
            listed = await http.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200  # (served once the start-up is done)
            assert provider.requests == 1  # fetched at start-up
            assert await connects(server.url, token) is True

            # the provider rotates a new key in: its first token makes the service fetch again
            provider.keys = [public_jwk(first, "RS256", "k1"), public_jwk(second, "ES256", "k2")]
            rotated = signed(second, "ES256", "k2")
            listed = await http.get("/api/v1/projects", headers={"Authorization": f"Bearer {rotated}"})
            assert listed.status_code == 200, listed.text
            assert provider.requests == 2
            assert await connects(server.url, rotated) is True  # known now: no fetch
            assert provider.requests == 2

            # made-up kids: refused, and no more than the one fetch per interval already spent
            for _ in range(20):
                assert await connects(server.url, signed(first, "RS256", f"made-up-{uuid4()}")) == "unknown_key"
            assert provider.requests == 2

            # algorithm confusion, live: an HS256 token "signed" with the provider's public key
            public_pem = first.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            with pytest.raises(jwt.InvalidKeyError):  # PyJWT itself refuses to make one ...
                jwt.encode({"sub": str(uuid4())}, public_pem, algorithm="HS256", headers={"kid": "k1"})
            # ... and a token of the key's kid with another algorithm finds no key to check it
            assert await connects(server.url, signed("x" * 40, "HS256", "k1")) == "bad_algorithm"


async def test_a_jwks_endpoint_that_hangs_costs_a_bounded_wait_and_the_service_keeps_serving():
    private = rs256_key()
    async with jwks_server() as provider:
        settings = settings_for(
            jwt_jwks_url=f"{provider.url}/hang", jwt_jwks_timeout_seconds=0.5, jwt_jwks_min_interval_seconds=0
        )
        started = time.monotonic()
        async with serve_in_process(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/health")).status_code == 200  # served once the start-up is done
            assert time.monotonic() - started < 5, "start-up waited for the JWKS longer than its timeout"
            attempts = await asyncio.wait_for(
                asyncio.gather(*(connects(server.url, signed(private, "RS256", "k1")) for _ in range(5))), 10
            )
            assert attempts == ["unknown_key"] * 5
            async with httpx.AsyncClient(base_url=server.url) as http:
                assert (await http.get("/health")).status_code == 200


async def test_a_key_file_is_read_again_when_it_changes(tmp_path: Path):
    old, new = rs256_key(), ec.generate_private_key(ec.SECP384R1())

    def pem(private: Any) -> str:
        return (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    keys_file = tmp_path / "keys.pem"
    keys_file.write_text(pem(old))
    async with serve_in_process(create_app(settings_for(jwt_keys_file=str(keys_file)))) as server:
        assert await connects(server.url, signed(old, "RS256")) is True
        assert await connects(server.url, signed(new, "ES384")) == "bad_algorithm"
        keys_file.write_text(pem(old) + pem(new))  # rotation: the new key added beside the old
        assert await connects(server.url, signed(new, "ES384")) is True
        assert await connects(server.url, signed(old, "RS256")) is True
        keys_file.write_text("garbage")  # a broken edit keeps the keys already read
        assert await connects(server.url, signed(new, "ES384")) is True


async def test_an_unusable_key_file_stops_the_start_saying_why(tmp_path: Path):
    keys_file = tmp_path / "keys.pem"
    keys_file.write_text("not a key")
    env = {
        "JWT_SECRET_KEY": TEST_SECRET,
        "JWT_KEYS_FILE": str(keys_file),
        "LOG_FILE": "",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ENVIRONMENT": "development",
        "DATABASE_URL": sqlite_url(),
    }
    with pytest.raises(AssertionError, match="server exited before it was ready") as info:
        await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    output = str(info.value)
    assert "JWT_KEYS_FILE" in output and "not starting" in output
