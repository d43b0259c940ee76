"""Verification keys: rotation by ``kid``, asymmetric algorithms from PEM and JWKS, and algorithm
confusion. Pure: KeySet and TokenVerifier, with keys made here by ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_module
import json
import time
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from apps.api.websocket.auth import AuthError, TokenVerifier, UnknownKey
from apps.api.websocket.keys import InvalidKey, KeySet, from_jwks, from_pem, hmac_key

OLD, NEW = "old-secret-" + "o" * 32, "new-secret-" + "n" * 32


def claims() -> dict[str, object]:
    return {"sub": str(uuid4()), "exp": int(time.time()) + 600}


def token(key: object, algorithm: str, kid: str | None = None) -> str:
    return jwt.encode(claims(), key, algorithm=algorithm, headers={"kid": kid} if kid else None)  # type: ignore[arg-type]


def reason(verifier: TokenVerifier, value: str) -> str:
    with pytest.raises(AuthError) as refused:
        verifier.verify(value)
    return refused.value.reason


def pem(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def jwk(public_key: object, algorithm: str, kid: str) -> dict[str, object]:
    as_jwk = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(public_key)  # type: ignore[attr-defined]
    return {**json.loads(as_jwk), "kid": kid}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, object], payload: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT made without PyJWT, which refuses some of what an attacker sends."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac_module.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_hmac_keys_rotate_by_kid_and_a_plain_previous_secret_still_verifies():
    by_kid = TokenVerifier(keys=KeySet([hmac_key(NEW, "HS256", kid="2026-12"), hmac_key(OLD, "HS256", kid="2026-11")]))
    assert by_kid.verify(token(NEW, "HS256", "2026-12"))
    assert by_kid.verify(token(OLD, "HS256", "2026-11"))
    assert reason(by_kid, token(OLD, "HS256", "2026-12")) == "bad_signature"  # the kid picks the key
    with pytest.raises(UnknownKey) as unknown:
        by_kid.verify(token(NEW, "HS256", "2027-01"))
    assert unknown.value.kid == "2027-01" and unknown.value.reason == "unknown_key"
    assert by_kid.verify(token(NEW, "HS256"))  # no kid: every key of its algorithm is tried

    plain = TokenVerifier(
        keys=KeySet([hmac_key(NEW, "HS256"), hmac_key(OLD, "HS256", origin="JWT_PREVIOUS_SECRET_KEY")])
    )
    assert plain.verify(token(OLD, "HS256")) and plain.verify(token(NEW, "HS256"))
    assert plain.verify(token(NEW, "HS256", "any-kid"))  # plain secrets verify tokens whatever their kid
    assert reason(plain, token("another-secret-" + "x" * 32, "HS256")) == "bad_signature"


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_asymmetric_keys_from_pem_and_from_jwks(kind):
    private = {
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    algorithm = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}[kind]
    from_file = TokenVerifier(keys=from_pem(pem(private.public_key()), origin="JWT_KEYS_FILE"))
    assert from_file.keys.algorithms() == {algorithm}
    assert from_file.verify(token(private, algorithm)).user_id

    document = {
        "keys": [jwk(private.public_key(), algorithm, "k1"), {"kty": "oct", "k": "AAAA", "kid": "e", "use": "enc"}]
    }
    from_url = TokenVerifier(keys=from_jwks(document, origin="JWT_JWKS_URL"))
    assert len(from_url.keys) == 1  # the encryption key is not a verification key
    assert from_url.verify(token(private, algorithm, "k1")).user_id
    with pytest.raises(AuthError) as refused:  # a token of another algorithm under the same kid
        from_url.verify(jwt.encode(claims(), NEW, algorithm="HS256", headers={"kid": "k1"}))
    assert refused.value.reason == "bad_algorithm"


def test_algorithm_confusion_is_impossible():
    """The classic attack: an HS256 token whose HMAC secret is the server's RSA public key (which
    is public). The RSA key verifies RS256 only, so no HMAC key checks the token; and beside an
    HMAC secret, the token is checked against that secret, not the public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = pem(private.public_key())
    # PyJWT refuses a PEM as an HMAC secret, so the attacker's token is signed by hand
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), public_pem.encode())

    rsa_only = TokenVerifier(keys=from_pem(public_pem, origin="JWT_KEYS_FILE"))
    assert reason(rsa_only, forged) == "bad_algorithm"
    both = TokenVerifier(keys=from_pem(public_pem, origin="JWT_KEYS_FILE") + KeySet([hmac_key(NEW, "HS256")]))
    assert reason(both, forged) == "bad_signature"
    assert both.verify(token(private, "RS256")) and both.verify(token(NEW, "HS256"))


def test_none_and_unknown_algorithms_and_odd_headers_are_refused():
    verifier = TokenVerifier(keys=KeySet([hmac_key(NEW, "HS256")]))
    unsigned = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert reason(verifier, unsigned) == "bad_algorithm"
    assert reason(verifier, token(NEW * 2, "HS512")) == "bad_algorithm"  # a key verifies its one algorithm
    weird_kid = hand_signed({"alg": "HS256", "kid": 7}, claims(), NEW.encode())
    assert reason(verifier, weird_kid) == "malformed"


def test_unusable_keys_are_refused_with_where_they_came_from():
    with pytest.raises(InvalidKey, match="JWT_KEYS_FILE"):
        from_pem("not a key", origin="JWT_KEYS_FILE")
    with pytest.raises(InvalidKey, match="JWT_JWKS_URL"):
        from_jwks({"keys": [{"kty": "RSA", "kid": "x"}]}, origin="JWT_JWKS_URL")
    with pytest.raises(InvalidKey, match="JWKS"):
        from_jwks([1, 2], origin="JWT_JWKS_URL")
    with pytest.raises(InvalidKey):
        hmac_key(NEW, "RS256")
