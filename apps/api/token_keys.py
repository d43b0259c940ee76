"""The token verifier's keys, from the settings, kept current while the service runs.

- ``JWT_SECRET_KEY`` (with ``JWT_SECRET_KEY_ID`` as its kid, if set) and ``JWT_PREVIOUS_SECRET_KEY``:
  HMAC keys of ``JWT_ALGORITHM``.
- ``JWT_KEYS_FILE``: a JWKS document or PEM public keys, read at start-up (an unusable file stops
  the start) and read again, if it has changed, when a token is not verified by the keys known.
- ``JWT_JWKS_URL``: an identity provider's JWKS, fetched at start-up (if it cannot be, the service
  starts and keeps trying), every ``JWT_JWKS_REFRESH_SECONDS``, and when a token names an unknown
  kid, at most once per ``JWT_JWKS_MIN_INTERVAL_SECONDS`` (tokens with made-up kids cost nothing);
  each fetch is bounded by ``JWT_JWKS_TIMEOUT_SECONDS`` and 1 MB. A failed fetch keeps the keys
  already known.

:func:`verify_token` is what callers use: the verifier, and one refresh on an unknown kid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import httpx
import jwt

from apps.api.config import Settings
from apps.api.websocket.auth import AuthError, AuthReason, Principal, TokenVerifier, UnknownKey
from apps.api.websocket.keys import InvalidKey, KeySet, from_jwks, from_pem, hmac_key

logger = logging.getLogger(__name__)

#: Largest JWKS document fetched.
MAX_JWKS_BYTES = 1_000_000


def secret_keys(settings: Settings) -> KeySet:
    keys = []
    if settings.hmac_secret_in_use:
        keys.append(
            hmac_key(settings.jwt_secret_key.get_secret_value(), settings.jwt_algorithm, kid=settings.jwt_secret_key_id)
        )
    if settings.jwt_previous_secret_key is not None:
        keys.append(
            hmac_key(
                settings.jwt_previous_secret_key.get_secret_value(),
                settings.jwt_algorithm,
                origin="JWT_PREVIOUS_SECRET_KEY",
            )
        )
    return KeySet(keys)


def read_keys_file(path: str) -> KeySet:
    """The keys of ``JWT_KEYS_FILE``: JSON is a JWKS (or one JWK), anything else PEM."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise InvalidKey(f"JWT_KEYS_FILE: not valid JSON ({exc.__class__.__name__})") from None
        return from_jwks(document, origin="JWT_KEYS_FILE")
    return from_pem(text, origin="JWT_KEYS_FILE")


class TokenKeys:
    """Keeps ``verifier.keys`` current (see the module docstring)."""

    def __init__(self, settings: Settings, verifier: TokenVerifier, *, client: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._verifier = verifier
        self._static = secret_keys(settings)
        self._file = KeySet()
        self._file_stamp: tuple[float, int] | None = None
        self._remote = KeySet()
        self._on_demand_at = float("-inf")  # the last fetch an unknown kid asked for
        self._client = client
        self._refreshing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._install()

    @property
    def dynamic(self) -> bool:
        """Whether an unknown kid can become known (a key file or a JWKS URL is configured)."""
        return bool(self._settings.jwt_keys_file or self._settings.jwt_jwks_url)

    async def start(self) -> None:
        """Reads the key file (an unusable one raises) and fetches the JWKS URL once (a failure is
        logged, and retried by the refresh loop)."""
        if self._settings.jwt_keys_file:
            self._reload_file(force=True)
        if self._settings.jwt_jwks_url:
            if self._client is None:
                self._client = httpx.AsyncClient(
                    timeout=self._settings.jwt_jwks_timeout_seconds, follow_redirects=False
                )
            await self._fetch()
            self._task = asyncio.create_task(self._refresh_forever())
        self._install()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self, kid: str | None) -> bool:
        """After a token no key verified: reread the key file if it has changed, and, when the
        token names a kid no key has, fetch the JWKS again unless that was done less than
        ``JWT_JWKS_MIN_INTERVAL_SECONDS`` ago. Whether the keys changed (worth verifying again)."""
        if not self.dynamic:
            return False
        async with self._refreshing:  # concurrent refusals wait for one refresh
            before = (self._file, self._remote)
            if self._settings.jwt_keys_file:
                self._reload_file(force=False)
            interval = self._settings.jwt_jwks_min_interval_seconds
            unknown = kid is not None and not (self._static + self._file + self._remote).knows(kid)
            if self._settings.jwt_jwks_url and unknown and time.monotonic() - self._on_demand_at >= interval:
                self._on_demand_at = time.monotonic()
                await self._fetch()
            self._install()
            return (self._file, self._remote) != before

    def _install(self) -> None:
        self._verifier.keys = self._static + self._file + self._remote

    def _reload_file(self, *, force: bool) -> None:
        path = self._settings.jwt_keys_file
        assert path is not None
        try:
            stat = Path(path).stat()
        except OSError as exc:
            if force:
                raise InvalidKey(f"JWT_KEYS_FILE cannot be read ({exc.strerror})") from None
            logger.warning("JWT_KEYS_FILE cannot be read (%s): keeping the keys already read", exc.strerror)
            return
        stamp = (stat.st_mtime, stat.st_size)
        if not force and stamp == self._file_stamp:
            return
        try:
            keys = read_keys_file(path)
        except (InvalidKey, OSError, UnicodeDecodeError) as exc:
            if force:
                raise InvalidKey(str(exc)) from None
            logger.warning("JWT_KEYS_FILE changed but cannot be used (%s): keeping the keys already read", exc)
            return
        self._file, self._file_stamp = keys, stamp
        logger.info("token keys: %d from JWT_KEYS_FILE", len(keys))

    async def _fetch(self) -> None:
        url = self._settings.jwt_jwks_url
        assert url is not None and self._client is not None
        try:
            async with self._client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise InvalidKey(f"JWT_JWKS_URL answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise InvalidKey(f"JWT_JWKS_URL sent more than {MAX_JWKS_BYTES} bytes")
            keys = from_jwks(json.loads(body), origin="JWT_JWKS_URL")
        except (httpx.HTTPError, InvalidKey, ValueError) as exc:
            logger.warning(
                "token keys: JWT_JWKS_URL could not be fetched (%s): keeping the %d keys already known",
                _describe(exc),
                len(self._remote),
            )
            return
        if {key.kid for key in keys} != {key.kid for key in self._remote}:
            logger.info("token keys: %d from JWT_JWKS_URL (kids %s)", len(keys), sorted(str(k.kid) for k in keys))
        self._remote = keys
        self._install()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.jwt_jwks_refresh_seconds)
            await self._fetch()


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    return str(exc)


async def verify_token(verifier: TokenVerifier, keys: TokenKeys | None, token: str | None) -> Principal:
    """The token's principal. A token no key verifies (an unknown kid, a bad signature: perhaps
    signed with a key just rotated in) gets one refresh of the keys, then one more try."""
    try:
        return verifier.verify(token)
    except AuthError as refused:
        if keys is None or refused.reason not in _WORTH_A_REFRESH:
            raise
        if not await keys.refresh(refused.kid if isinstance(refused, UnknownKey) else _kid_of(token)):
            raise
    return verifier.verify(token)


_WORTH_A_REFRESH = frozenset({AuthReason.UNKNOWN_KEY, AuthReason.BAD_SIGNATURE, AuthReason.BAD_ALGORITHM})


def _kid_of(token: str | None) -> str | None:
    try:
        kid = jwt.get_unverified_header(token or "").get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None
