"""TokenVerifier and extract_token: pure, no server."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apps.api.tests.support import TEST_SECRET, make_token
from apps.api.websocket.auth import AuthError, Principal, TokenVerifier, extract_token
from apps.api.websocket.keys import KeySet, VerificationKey, hmac_key


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


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def _key_sets() -> dict[str, KeySet]:
    return {
        "a secret": KeySet([hmac_key(TEST_SECRET, "HS256")]),
        "a secret with a kid": KeySet([hmac_key(TEST_SECRET, "HS256", kid="a")]),
        "an RS256 key": KeySet([VerificationKey(kid=None, algorithm="RS256", key=_RSA.public_key())]),
        "an RS256 key with a kid": KeySet([VerificationKey(kid="a", algorithm="RS256", key=_RSA.public_key())]),
        "an ES256 key": KeySet([VerificationKey(kid=None, algorithm="ES256", key=_EC.public_key())]),
    }


def _tokens_of_every_kind() -> dict[str, str]:
    """Tokens each of which one check accepts or refuses: what the verifier's shortcut must agree on."""
    now = int(time.time())
    base = {"sub": str(uuid4()), "exp": now + 3600, "iat": now, "iss": "https://issuer.example", "roles": ["admin"]}
    signers: dict[str, tuple[object, str]] = {
        "HS256": (TEST_SECRET, "HS256"),
        "HS256 another secret": ("y" * 40, "HS256"),
        "HS512": (TEST_SECRET, "HS512"),
        "RS256": (_RSA, "RS256"),
        "PS256": (_RSA, "PS256"),
        "ES256": (_EC, "ES256"),
    }
    claims_of = {
        "valid": base,
        "expired": {**base, "exp": now - 3600},
        "not yet valid": {**base, "nbf": now + 3600},
        "another issuer": {**base, "iss": "https://other.example"},
        "no sub": {k: v for k, v in base.items() if k != "sub"},
        "sub not a uuid": {**base, "sub": "alice"},
        "exp a string": {**base, "exp": str(now + 3600)},
        "roles not a list": {**base, "roles": "admin"},
    }
    tokens = {}
    for signer, (key, algorithm) in signers.items():
        for kid in (None, "a", "b"):
            for what, claims in claims_of.items() if signer == "HS256" and kid is None else [("valid", base)]:
                headers = {"kid": kid} if kid else None
                tokens[f"{signer}|{kid}|{what}"] = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    tokens.update(
        {
            "kid not a string": _signed_raw({"alg": "HS256", "typ": "JWT", "kid": 7}, base),
            "alg none": jwt.encode(base, None, algorithm="none"),
            "not a jwt": "abc.def.ghi",
            "two segments": "abc.def",
            "bad header": "e30x." + make_token().split(".", 1)[1],
            "not ascii": make_token() + "\u00e9",
            "a lone surrogate": "\ud800",
        }
    )
    return tokens


@pytest.mark.parametrize("issuer", [None, "https://issuer.example"])
@pytest.mark.parametrize("key_set", list(_key_sets()))
def test_the_one_key_shortcut_decides_as_the_full_check(key_set: str, issuer: str | None) -> None:
    # With one key and no kid the token is decoded first and its header checked after; the same
    # key twice takes the full check (header first, then the keys it names), which must decide
    # every token the same way: the same principal, or the same reason.
    keys = _key_sets()[key_set]
    shortcut = TokenVerifier(keys=keys, issuer=issuer)
    full = TokenVerifier(keys=KeySet([*keys, *keys]), issuer=issuer)
    tokens = _tokens_of_every_kind()
    decided = {name: _outcome(shortcut, token) for name, token in tokens.items()}
    assert decided == {name: _outcome(full, token) for name, token in tokens.items()}
    assert decided["alg none"] == "bad_algorithm" and decided["not ascii"] == "malformed"
    assert decided["a lone surrogate"] == "malformed" and decided["kid not a string"] == "malformed"
    (key,) = keys
    accepted = {name for name, outcome in decided.items() if isinstance(outcome, Principal)}
    # what the key takes: its algorithm's valid tokens, with its kid or none if it has one (an
    # unnamed key takes any kid); another issuer's too when no issuer is required
    takes = {"valid"} | ({"another issuer"} if issuer is None else set())
    assert accepted == {
        name
        for name in tokens
        if name.count("|") == 2
        and (parts := name.split("|"))[0] == key.algorithm
        and parts[2] in takes
        and (key.kid is None or parts[1] in ("None", key.kid))
    }, key_set


def test_a_token_is_decoded_once_with_one_key_accepted_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[str] = []
    headers: list[str] = []
    decode, header = TokenVerifier._decode, jwt.get_unverified_header

    def counting_decode(self: TokenVerifier, token: str, key: VerificationKey) -> object:
        decodes.append(token)
        return decode(self, token, key)

    def counting_header(token: str) -> object:
        headers.append(token)
        return header(token)

    monkeypatch.setattr(TokenVerifier, "_decode", counting_decode)
    monkeypatch.setattr(jwt, "get_unverified_header", counting_header)
    check = verifier()
    check.verify(make_token())
    assert (len(decodes), len(headers)) == (1, 0), "a valid token is parsed once"
    for token, reason in ((make_token(secret="y" * 40), "bad_signature"), (make_token(ttl=-3600), "expired")):
        decodes.clear()
        assert _outcome(check, token) == reason
        assert len(decodes) == 1, f"a token refused for {reason} is decoded once"
    # a key with a kid: a token naming another kid is refused (worth a key refresh) before any decode
    named = TokenVerifier(keys=KeySet([hmac_key(TEST_SECRET, "HS256", kid="a")]))
    decodes.clear()
    other_kid = jwt.encode({"sub": str(uuid4()), "exp": int(time.time()) + 60}, TEST_SECRET, headers={"kid": "b"})
    assert _outcome(named, other_kid) == "unknown_key"
    assert decodes == []


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
