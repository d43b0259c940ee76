"""TokenVerifier and extract_token: pure, no server."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from uuid import uuid4

import jwt
import pytest

from apps.api.tests.support import TEST_SECRET, make_token
from apps.api.websocket.auth import AuthError, Principal, TokenVerifier, extract_token


def verifier(**overrides) -> TokenVerifier:
    options = {"secret": TEST_SECRET, "algorithm": "HS256", "leeway_seconds": 10}
    options.update(overrides)
    return TokenVerifier(**options)


def test_valid_token_gives_the_subject_as_user_id():
    user = uuid4()
    principal = verifier().verify(make_token(user, roles=["admin", "dev"]))
    assert principal.user_id == user
    assert principal.roles == {"admin", "dev"}
    assert principal.is_admin
    assert principal.expires_at is not None


def test_roles_are_optional_and_a_list_of_strings():
    assert verifier().verify(make_token(roles=None, extra="x")).roles == frozenset()
    assert verifier().verify(make_token(roles=["admin", "service"])).roles == {"admin", "service"}


def test_admin_role_name_is_configurable():
    token = make_token(roles=["admin"])
    assert not verifier(admin_role="superuser").verify(token).is_admin


def test_leeway_accepts_a_token_just_expired_and_no_more():
    assert verifier(leeway_seconds=30).verify(make_token(ttl=-5))
    with pytest.raises(AuthError) as info:
        verifier(leeway_seconds=30).verify(make_token(ttl=-60))
    assert info.value.reason == "expired"


def test_not_yet_valid_token_is_refused():
    with pytest.raises(AuthError) as info:
        verifier(leeway_seconds=0).verify(make_token(nbf=int(time.time()) + 600))
    assert info.value.reason == "not_yet_valid"


@pytest.mark.parametrize(
    ("options", "claims", "reason"),
    [
        ({"issuer": "https://id.example"}, {}, "missing_claim"),
        ({"issuer": "https://id.example"}, {"iss": "https://evil.example"}, "bad_issuer"),
        ({"audience": "events"}, {"aud": "other"}, "bad_audience"),
        ({"audience": "events"}, {}, "missing_claim"),
    ],
)
def test_issuer_and_audience_are_checked_when_configured(options, claims, reason):
    with pytest.raises(AuthError) as info:
        verifier(**options).verify(make_token(**claims))
    assert info.value.reason == reason


def test_issuer_and_audience_pass_when_they_match():
    v = verifier(issuer="https://id.example", audience="events")
    assert v.verify(make_token(iss="https://id.example", aud="events"))


def test_audience_in_token_is_ignored_when_not_configured():
    assert verifier().verify(make_token(aud="whatever"))


def test_algorithm_is_pinned():
    for algorithm in ("HS384", "HS512"):
        with pytest.raises(AuthError) as info:
            verifier().verify(make_token(algorithm=algorithm))
        assert info.value.reason == "bad_algorithm"
    assert verifier(algorithm="HS512").verify(make_token(algorithm="HS512"))


def test_error_never_contains_the_token():
    token = make_token(secret="x" * 64)
    with pytest.raises(AuthError) as info:
        verifier().verify(token)
    assert token not in str(info.value) and token not in repr(info.value.as_dict())
    assert info.value.as_dict() == {
        "code": "AUTH_FAILED",
        "reason": "bad_signature",
        "message": "The token's signature is invalid",
    }


def test_extract_token_order_and_forms():
    assert extract_token({"token": "a"}, authorization="Bearer b", query_string="token=c") == "a"
    assert extract_token({}, authorization="Bearer b", query_string="token=c") == "b"
    assert extract_token(None, authorization="bearer  b ", query_string=None) == "b"
    assert extract_token(None, authorization="Basic xyz", query_string="EIO=4&token=c&transport=polling") == "c"
    assert extract_token("bare", authorization=None, query_string=None) == "bare"
    assert extract_token({"token": ""}, authorization="Bearer ", query_string="token=") is None
    assert extract_token(None) is None


def _outcome(check: TokenVerifier, token: str) -> object:
    try:
        return check.verify(token)
    except AuthError as exc:
        return exc.reason


def _signed_raw(header: dict[str, object], claims: dict[str, object]) -> str:
    """A token PyJWT would not write (a header it refuses), signed with the test secret."""
    part = lambda value: jwt.utils.base64url_encode(json.dumps(value).encode()).decode()  # noqa: E731
    signing_input = f"{part(header)}.{part(claims)}"
    mac = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{jwt.utils.base64url_encode(mac).decode()}"


def _tokens_of_every_kind() -> dict[str, str]:
    """Tokens each of which one check accepts or refuses: what the verifier's shortcut must agree on."""
    user = uuid4()
    now = int(time.time())
    signed = lambda claims, headers=None, algorithm="HS256", secret=TEST_SECRET: jwt.encode(  # noqa: E731
        claims, secret, algorithm=algorithm, headers=headers
    )
    base = {"sub": str(user), "exp": now + 3600, "iat": now}
    return {
        "valid": make_token(user, roles=["admin"]),
        "valid with a kid": signed(base, headers={"kid": "any"}),
        "kid not a string": _signed_raw({"alg": "HS256", "typ": "JWT", "kid": 7}, base),
        "another secret": make_token(secret="y" * 40),
        "another algorithm": make_token(algorithm="HS512"),
        "alg none": jwt.encode(base, None, algorithm="none"),
        "expired": make_token(ttl=-3600),
        "not yet valid": signed({**base, "nbf": now + 3600}),
        "no sub": signed({"exp": now + 3600}),
        "sub not a uuid": signed({**base, "sub": "alice"}),
        "exp a string": signed({**base, "exp": str(now + 3600)}),
        "roles not a list": signed({**base, "roles": "admin"}),
        "not a jwt": "abc.def.ghi",
        "two segments": "abc.def",
        "bad header": "e30x." + make_token().split(".", 1)[1],
    }


def test_the_one_key_shortcut_decides_as_the_full_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # With one key the token is parsed once, its header checked after PyJWT's decode; every
    # token must get what the full check (header first, then the key it names) gives it.
    check = verifier()
    tokens = _tokens_of_every_kind()
    shortcut = {name: _outcome(check, token) for name, token in tokens.items()}
    monkeypatch.setattr(TokenVerifier, "_with_the_only_key", lambda self, token, keys: None)
    full = {name: _outcome(check, token) for name, token in tokens.items()}
    assert shortcut == full
    assert isinstance(shortcut["valid"], Principal) and shortcut["valid"].is_admin
    assert shortcut["another secret"] == "bad_signature" and shortcut["alg none"] == "bad_algorithm"
    assert shortcut["kid not a string"] == "malformed" and shortcut["exp a string"] == "invalid_claim"


def test_pyjwt_keeps_its_jws_decoder_where_the_verifier_replaces_hmac() -> None:
    # The verifier's PyJWT checks each HMAC secret once (PyJWT 2.15 checks it on every decode, by
    # parsing it as DER): it relies on PyJWT's private ``_jws``, which this fails without.
    from apps.api.websocket import auth

    jws = auth._DECODER._jws
    assert isinstance(jws, jwt.PyJWS)
    prepared_once = jws.get_algorithm_by_name("HS256")
    assert isinstance(prepared_once, auth._PreparedOnceHMAC)
    before = prepared_once._prepared.cache_info()
    for _ in range(3):
        verifier().verify(make_token())
    after = prepared_once._prepared.cache_info()
    assert after.hits + after.misses == before.hits + before.misses + 3, "the verifier does not decode with it"
    assert after.currsize <= 8
    # a secret that is a public key is still refused, every time (refusals are not kept)
    with pytest.raises(jwt.InvalidKeyError):
        prepared_once.prepare_key(b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----")
    # the process-wide PyJWT is left as it was
    assert not isinstance(jwt.api_jws._jws_global_obj.get_algorithm_by_name("HS256"), auth._PreparedOnceHMAC)
