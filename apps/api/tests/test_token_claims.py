"""Signed tokens with ill-typed claims (RFC 7519 types): each refused with its reason, never an
exception of another kind and never a token that does not expire. Pure: TokenVerifier only."""

from __future__ import annotations

import math
import time
from uuid import uuid4

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.api.tests.support import TEST_SECRET
from apps.api.websocket.auth import MAX_NUMERIC_DATE, AuthError, TokenVerifier


def verifier() -> TokenVerifier:
    return TokenVerifier(secret=TEST_SECRET, algorithm="HS256", leeway_seconds=0)


def signed(**claims: object) -> str:
    base: dict[str, object] = {"sub": str(uuid4()), "exp": int(time.time()) + 600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, TEST_SECRET, algorithm="HS256")


def reason_of(token: str) -> str:
    with pytest.raises(AuthError) as refused:
        verifier().verify(token)
    return refused.value.reason


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        # the issue's cases: a numeric string never expired; 1e20 and roles: 5 were 500s; a dict granted admin
        ({"exp": str(int(time.time()) + 600)}, "invalid_claim"),
        ({"exp": str(int(time.time()) - 600)}, "invalid_claim"),
        ({"exp": 1e20}, "invalid_claim"),
        ({"roles": 5}, "invalid_claim"),
        ({"roles": {"admin": 1}}, "invalid_claim"),
        ({"roles": "admin"}, "invalid_claim"),
        ({"roles": ["admin", 1]}, "invalid_claim"),
        ({"roles": [["admin"]]}, "invalid_claim"),
        ({"exp": True}, "invalid_claim"),
        ({"exp": -1}, "invalid_claim"),
        ({"exp": MAX_NUMERIC_DATE + 1}, "invalid_claim"),
        ({"exp": [1]}, "invalid_claim"),
        ({"exp": {"$date": 1}}, "invalid_claim"),
        ({"nbf": "0"}, "invalid_claim"),
        ({"iat": "now"}, "invalid_claim"),
        ({"nbf": int(time.time()) + 600}, "not_yet_valid"),
        ({"iat": int(time.time()) + 600}, "not_yet_valid"),
        ({"exp": int(time.time()) - 1}, "expired"),
        ({"exp": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"sub": 12345}, "invalid_subject"),
        ({"sub": ["x"]}, "invalid_subject"),
        ({"sub": "alice"}, "invalid_subject"),
        ({"sub": "'; DROP TABLE users; --"}, "invalid_subject"),
    ],
)
def test_an_ill_typed_claim_is_refused_with_its_reason(claims, reason):
    assert reason_of(signed(**claims)) == reason


def test_the_issue_cases_name_the_claim_in_the_message():
    with pytest.raises(AuthError) as refused:
        verifier().verify(signed(exp=str(int(time.time()) + 600)))
    assert "exp" in refused.value.message and "NumericDate" in refused.value.message
    with pytest.raises(AuthError) as refused:
        verifier().verify(signed(roles={"admin": 1}))
    assert "roles" in refused.value.message


def test_well_typed_dates_are_accepted_including_fractions():
    now = time.time()
    principal = verifier().verify(signed(exp=now + 60.5, nbf=now - 1.25, iat=now - 1))
    assert principal.expires_at is not None
    assert abs(principal.expires_at.timestamp() - (now + 60.5)) < 1e-3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(exp=json_values, nbf=json_values, iat=json_values, roles=json_values, sub=json_values)
def test_any_claim_values_give_a_principal_that_expires_or_a_refusal(exp, nbf, iat, roles, sub):
    """Whatever JSON a signed token carries in these claims, verify() gives either a principal
    whose expiry is a real time, or an AuthError: never another exception."""
    claims = {"exp": exp, "nbf": nbf, "iat": iat, "roles": roles, "sub": sub}
    token = jwt.encode({k: v for k, v in claims.items() if v is not None}, TEST_SECRET, algorithm="HS256")
    try:
        principal = verifier().verify(token)
    except AuthError:
        return
    assert principal.expires_at is not None and math.isfinite(principal.expires_at.timestamp())
    assert isinstance(exp, int | float) and not isinstance(exp, bool)
    assert all(isinstance(role, str) for role in principal.roles) and isinstance(roles, list | type(None))
