"""TokenVerifier and extract_token: pure, no server."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest

from apps.api.tests.support import TEST_SECRET, make_token
from apps.api.websocket.auth import AuthError, TokenVerifier, extract_token


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
