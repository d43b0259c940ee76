"""Token to principal: JWT validation with no I/O and no Socket.IO.

Every refusal raises :class:`AuthError`, whose ``reason`` is machine-readable. The token itself is
never part of an error or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

import jwt

#: Every refused connection carries this code (the card's ``connect_error`` check reads it).
AUTH_FAILED = "AUTH_FAILED"
#: Longest token accepted; anything longer is refused as malformed before it is parsed.
MAX_TOKEN_LENGTH = 8192


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


class TokenVerifier:
    """Validates JWTs against one pinned algorithm and secret.

    ``exp`` and ``sub`` are required, ``sub`` must be a UUID; ``iss``/``aud`` are checked when
    configured. Roles come from a ``roles`` claim (a list of strings, or one string).
    """

    def __init__(
        self,
        *,
        secret: str,
        algorithm: str,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 10,
        admin_role: str = "admin",
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
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
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(AuthReason.MALFORMED)
        required = ["exp", "sub"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(AuthReason.EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise AuthError(AuthReason.NOT_YET_VALID) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(AuthReason.MISSING_CLAIM, exc.claim) from None
        except jwt.InvalidIssuerError:
            raise AuthError(AuthReason.BAD_ISSUER) from None
        except jwt.InvalidAudienceError:
            raise AuthError(AuthReason.BAD_AUDIENCE) from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(AuthReason.BAD_ALGORITHM) from None
        except jwt.InvalidSignatureError:
            raise AuthError(AuthReason.BAD_SIGNATURE) from None
        except jwt.InvalidTokenError:
            raise AuthError(AuthReason.MALFORMED) from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        try:
            user_id = UUID(str(claims["sub"]))
        except ValueError:
            raise AuthError(AuthReason.INVALID_SUBJECT) from None
        raw_roles = claims.get("roles", ())
        roles = frozenset([raw_roles] if isinstance(raw_roles, str) else (r for r in raw_roles if isinstance(r, str)))
        exp = claims["exp"]
        expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
        return Principal(user_id=user_id, roles=roles, expires_at=expires_at, admin_role=self._admin_role)


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
