"""Verification keys: which key checks a token, chosen by its ``kid`` and bound to one algorithm.

Pure: keys are parsed from values and text the caller has read (a JWKS document, PEM text, an
HMAC secret); fetching a JWKS URL or reading a file is :mod:`apps.api.jwks`'s.

Every key verifies exactly one algorithm (a JWK's ``alg``, or the one its type implies: RSA
RS256, EC by curve ES256/ES384/ES512, OKP EdDSA, oct HS256; an HMAC secret the configured HS*),
and a token is checked only with keys of its header's algorithm. So an HMAC token signed with an
RSA public key as its secret (algorithm confusion) finds no HMAC key to be checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class InvalidKey(ValueError):
    """A key that cannot be used (bad JWKS entry, PEM text that is not a public key...)."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    #: The ``kid`` tokens name it by; None: any token of its algorithm without a known ``kid``.
    kid: str | None
    #: The one algorithm it verifies.
    algorithm: str
    #: What PyJWT verifies with: the secret's bytes, or a cryptography public key.
    key: Any
    #: Where it came from ("JWT_SECRET_KEY", "JWT_KEYS_FILE", "JWT_JWKS_URL"), for logs and errors.
    origin: str = ""


class KeySet:
    """The keys a token may be verified with."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._keys = tuple(keys)
        self._by_kid: dict[str, list[VerificationKey]] = {}
        for key in self._keys:
            if key.kid is not None:
                self._by_kid.setdefault(key.kid, []).append(key)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._keys)

    def __add__(self, other: KeySet) -> KeySet:
        return KeySet((*self._keys, *other._keys))

    def knows(self, kid: str) -> bool:
        return kid in self._by_kid

    def candidates(self, kid: str | None, algorithm: str) -> list[VerificationKey] | None:
        """The keys to try for a token with this header, only keys of ``algorithm``: those named
        by ``kid``; else those without a ``kid`` (a plain secret); a token without a ``kid`` is
        tried with every key of its algorithm when no key lacks one. None when ``kid`` names no
        key and no key without one can be tried (an unknown key: worth a JWKS refresh)."""
        unnamed = [key for key in self._keys if key.kid is None]
        if kid is not None:
            pool = self._by_kid.get(kid) or unnamed
            if kid not in self._by_kid and not any(key.algorithm == algorithm for key in pool):
                return None
        else:
            pool = unnamed or list(self._keys)
        return [key for key in pool if key.algorithm == algorithm]

    def algorithms(self) -> frozenset[str]:
        return frozenset(key.algorithm for key in self._keys)


def hmac_key(secret: str, algorithm: str, *, kid: str | None = None, origin: str = "JWT_SECRET_KEY") -> VerificationKey:
    if algorithm not in HMAC_ALGORITHMS:
        raise InvalidKey(f"an HMAC secret verifies HS256, HS384 or HS512, not {algorithm}")
    return VerificationKey(kid=kid, algorithm=algorithm, key=secret.encode(), origin=origin)


def from_jwks(document: object, *, origin: str) -> KeySet:
    """The keys of a JWKS document (``{"keys": [...]}``), or of one JWK. Entries meant for
    encryption (``"use": "enc"``) are skipped; an entry PyJWT cannot use is an error."""
    if isinstance(document, Mapping) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidKey(f"{origin}: not a JWKS document (an object with a 'keys' list)")
    keys = []
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, Mapping):
            raise InvalidKey(f"{origin}: key {index} is not an object")
        if entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidKey(f"{origin}: key {index}'s kid is not a string")
        try:
            jwk = jwt.PyJWK(dict(entry))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise InvalidKey(f"{origin}: key {kid or index} cannot be used ({type(exc).__name__}: {exc})") from None
        algorithm = jwk.algorithm_name
        if algorithm not in ALGORITHMS:
            raise InvalidKey(f"{origin}: key {kid or index} has an algorithm this service does not accept")
        keys.append(VerificationKey(kid=kid, algorithm=algorithm, key=jwk.key, origin=origin))
    return KeySet(keys)


def from_pem(text: str, *, origin: str, kid: str | None = None) -> KeySet:
    """The public key(s) of PEM text (one or more ``-----BEGIN PUBLIC KEY-----`` blocks), each
    bound to the algorithm its type implies (RSA RS256, EC by curve, Ed25519/Ed448 EdDSA)."""
    blocks = [block for block in text.split("-----END PUBLIC KEY-----") if "-----BEGIN" in block]
    if not blocks:
        raise InvalidKey(f"{origin}: no PEM public key (-----BEGIN PUBLIC KEY-----) found")
    keys = []
    for number, block in enumerate(blocks):
        pem = (block[block.index("-----BEGIN") :] + "-----END PUBLIC KEY-----\n").encode()
        try:
            public_key = load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise InvalidKey(f"{origin}: PEM block {number} is not a public key ({exc})") from None
        key_id = kid if len(blocks) == 1 else (f"{kid}-{number}" if kid else None)
        keys.append(
            VerificationKey(kid=key_id, algorithm=_algorithm_of(public_key, origin), key=public_key, origin=origin)
        )
    return KeySet(keys)


def _algorithm_of(public_key: object, origin: str) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(public_key.curve.name)
        if algorithm is None:
            raise InvalidKey(f"{origin}: EC curve {public_key.curve.name} is not one of P-256, P-384, P-521")
        return algorithm
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise InvalidKey(f"{origin}: {type(public_key).__name__} keys are not accepted")
