"""Token to principal: JWT validation with no I/O and no Socket.IO.

Every refusal raises :class:`AuthError`, whose ``reason`` is machine-readable. The token itself is
never part of an error or a log line.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

import jwt
from jwt.algorithms import HMACAlgorithm

from apps.api.websocket.keys import ALGORITHMS, KeySet, VerificationKey, hmac_key

#: Every refused connection carries this code (the card's ``connect_error`` check reads it).
AUTH_FAILED = "AUTH_FAILED"
#: Longest token accepted; anything longer is refused as malformed before it is parsed.
MAX_TOKEN_LENGTH = 8192
#: The latest NumericDate accepted (9999-12-31T23:59:59Z): anything later cannot be a date.
MAX_NUMERIC_DATE = 253_402_300_799


class AuthReason:
    """Machine-readable reasons for a refused token (``error.data.content.reason``)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    BAD_ALGORITHM = "bad_algorithm"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    MISSING_CLAIM = "missing_claim"
    BAD_ISSUER = "bad_issuer"
    BAD_AUDIENCE = "bad_audience"
    INVALID_SUBJECT = "invalid_subject"
    INVALID_CLAIM = "invalid_claim"
    UNKNOWN_KEY = "unknown_key"


_MESSAGES = {
    AuthReason.MISSING: (
        "No token: send it as auth.token, an 'Authorization: Bearer' header or a 'token' query parameter"
    ),
    AuthReason.MALFORMED: "The token is not a well-formed JWT",
    AuthReason.BAD_SIGNATURE: "The token's signature is invalid",
    AuthReason.BAD_ALGORITHM: "The token is signed with an algorithm this server does not accept",
    AuthReason.EXPIRED: "The token has expired; refresh it and reconnect",
    AuthReason.NOT_YET_VALID: "The token is not valid yet",
    AuthReason.MISSING_CLAIM: "The token lacks a required claim",
    AuthReason.BAD_ISSUER: "The token's issuer is not accepted",
    AuthReason.BAD_AUDIENCE: "The token's audience is not accepted",
    AuthReason.INVALID_SUBJECT: "The token's 'sub' claim must be a user id (a UUID)",
    AuthReason.INVALID_CLAIM: "A claim of the token has the wrong type",
    AuthReason.UNKNOWN_KEY: "The token's key (kid) is not one this server knows",
}


class AuthError(Exception):
    """A token was refused. ``code`` is always ``AUTH_FAILED``; ``reason`` says why."""

    code = AUTH_FAILED

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.message = _MESSAGES[reason] + (f" ({detail})" if detail else "")
        super().__init__(self.message)

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason, "message": self.message}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a connection or a request."""

    user_id: UUID
    roles: frozenset[str] = field(default_factory=frozenset)
    expires_at: datetime | None = None
    admin_role: str = "admin"

    @property
    def is_admin(self) -> bool:
        return self.admin_role in self.roles


class _PreparedOnceHMAC(HMACAlgorithm):
    """PyJWT's HMAC, checking each secret once. PyJWT checks on every decode that an HMAC secret is
    not a PEM, SSH or DER public key (it tries to load it as DER, twice): about half of a token's
    verification. The answer depends on the secret's bytes alone, so it is kept, for a few secrets."""

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._prepared = functools.lru_cache(maxsize=8)(super().prepare_key)

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared: bytes = self._prepared(key)
        return prepared


def _decoder() -> jwt.PyJWT:
    """A PyJWT of the verifier's own (the process-wide ``jwt.decode`` is left as it is), with
    :class:`_PreparedOnceHMAC` for HS256, HS384 and HS512. PyJWT keeps its JWS decoder in ``_jws``
    (a private attribute: ``test_auth`` fails if that changes)."""
    decoder = jwt.PyJWT()
    jws = decoder._jws
    for name, hash_alg in (
        ("HS256", HMACAlgorithm.SHA256),
        ("HS384", HMACAlgorithm.SHA384),
        ("HS512", HMACAlgorithm.SHA512),
    ):
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, _PreparedOnceHMAC(hash_alg))
    return decoder


_DECODER = _decoder()


class TokenVerifier:
    """Validates JWTs: the signature with a key of :attr:`keys` chosen by the token's ``kid`` and
    bound to its algorithm (see :mod:`apps.api.websocket.keys`), then the claims, by type.

    ``exp`` and ``sub`` are required; ``exp``, ``nbf`` and ``iat`` must be NumericDates (RFC 7519:
    numbers of seconds, not strings or booleans), ``sub`` a user id (a UUID), ``roles`` (if any) a
    list of strings; ``iss``/``aud`` are checked when configured. ``keys`` may be replaced while
    the service runs (a JWKS refreshed, a key file changed).
    """

    def __init__(
        self,
        *,
        keys: KeySet | None = None,
        secret: str | None = None,
        algorithm: str = "HS256",
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 10,
        admin_role: str = "admin",
    ) -> None:
        self.keys = (keys or KeySet()) + (KeySet([hmac_key(secret, algorithm)]) if secret is not None else KeySet())
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._admin_role = admin_role

    @property
    def leeway_seconds(self) -> float:
        return self._leeway

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(AuthReason.MISSING)
        # a JWT is ASCII (base64url and dots): anything else, a lone surrogate included, is not one
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise AuthError(AuthReason.MALFORMED)
        keys = self.keys
        # One key without a kid (a plain secret, one public key): every token of its algorithm goes
        # to it, whatever its kid, so its decode is tried first and the token parsed once (the
        # header PyJWT decoded is the one the checks below read). Its outcome stands for that key
        # below: a refused token is not decoded twice.
        decoded: dict[str, Any] | None = None
        tried: tuple[VerificationKey, Exception] | None = None
        if len(keys) == 1:
            (only,) = keys
            if only.kid is None and only.algorithm in ALGORITHMS:
                try:
                    decoded = self._decode(token, only)
                except (AuthError, jwt.InvalidSignatureError) as exc:
                    tried = (only, exc)
        if decoded is not None:
            header = decoded["header"]
        else:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.InvalidTokenError:
                raise AuthError(AuthReason.MALFORMED) from None
        candidates = self._candidates(header, keys)
        if decoded is not None and any(candidate is only for candidate in candidates):
            return self._principal(decoded["payload"])
        for key in candidates:
            try:
                if tried is not None and key is tried[0]:
                    raise tried[1]
                claims = self._decode(token, key)["payload"]
                break
            except jwt.InvalidSignatureError:
                continue
        else:
            raise AuthError(AuthReason.BAD_SIGNATURE)
        return self._principal(claims)

    @staticmethod
    def _candidates(header: Mapping[str, Any], keys: KeySet) -> list[VerificationKey]:
        """The keys of ``keys`` a token with this header is tried with; refused (``AuthError``) when
        its ``alg`` is not one accepted, its ``kid`` not a string, or no key can be tried."""
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:  # "none" among them
            raise AuthError(AuthReason.BAD_ALGORITHM)
        if kid is not None and not isinstance(kid, str):
            raise AuthError(AuthReason.MALFORMED, "kid")
        candidates = keys.candidates(kid, algorithm)
        if candidates is None:
            raise UnknownKey(kid or "")
        if not candidates:
            raise AuthError(AuthReason.BAD_ALGORITHM)
        return candidates

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        """PyJWT's decode of ``token`` with ``key``: ``{"header", "payload", "signature"}``."""
        required = ["exp", "sub"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        try:
            decoded: dict[str, Any] = _DECODER.decode_complete(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self._issuer,
                audience=self._audience,
                # the times are checked by _principal, by type first (PyJWT takes "exp": "123")
                options={
                    "require": required,
                    "verify_aud": self._audience is not None,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(AuthReason.MISSING_CLAIM, exc.claim) from None
        except jwt.InvalidIssuerError:
            raise AuthError(AuthReason.BAD_ISSUER) from None
        except jwt.InvalidAudienceError:
            raise AuthError(AuthReason.BAD_AUDIENCE) from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(AuthReason.BAD_ALGORITHM) from None
        except jwt.exceptions.InvalidSubjectError:
            raise AuthError(AuthReason.INVALID_SUBJECT) from None
        except jwt.InvalidTokenError:
            raise AuthError(AuthReason.MALFORMED) from None
        return decoded

    def _principal(self, claims: Mapping[str, Any], now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        assert exp is not None  # required
        if now >= exp + self._leeway:
            raise AuthError(AuthReason.EXPIRED)
        if (nbf is not None and nbf > now + self._leeway) or (iat is not None and iat > now + self._leeway):
            raise AuthError(AuthReason.NOT_YET_VALID)
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise AuthError(AuthReason.INVALID_SUBJECT)
        try:
            user_id = UUID(subject)
        except ValueError:
            raise AuthError(AuthReason.INVALID_SUBJECT) from None
        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list) or not all(isinstance(role, str) for role in raw_roles):
            raise AuthError(AuthReason.INVALID_CLAIM, "roles must be a list of strings")
        return Principal(
            user_id=user_id,
            roles=frozenset(raw_roles),
            expires_at=datetime.fromtimestamp(exp, UTC),
            admin_role=self._admin_role,
        )


class UnknownKey(AuthError):
    """The token names a ``kid`` no key has (a JWKS that rotated may know it once refreshed)."""

    def __init__(self, kid: str) -> None:
        super().__init__(AuthReason.UNKNOWN_KEY)
        self.kid = kid


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """RFC 7519's NumericDate: a JSON number of seconds since 1970 (not a string, not a boolean),
    finite and no later than 9999-12-31."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_NUMERIC_DATE:
        raise AuthError(AuthReason.INVALID_CLAIM, f"{name} must be a NumericDate: a number of seconds since 1970")
    return float(value)


def extract_token(auth: object, *, authorization: str | None = None, query_string: str | None = None) -> str | None:
    """The token a client sent, from (in order) ``auth.token``, ``Authorization: Bearer`` or
    the ``token`` query parameter. ``auth`` may also be the bare token string."""
    if isinstance(auth, Mapping):
        token = auth.get("token")
        if token:
            return token if isinstance(token, str) else str(token)
    elif isinstance(auth, str) and auth:
        return auth
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if query_string:
        values = parse_qs(query_string).get("token")
        if values and values[0]:
            return values[0]
    return None
