"""Mint a development token signed with the configured secret.

    python -m apps.api.devtools.token [--user UUID] [--role admin] [--ttl 3600]

Prints the JWT on stdout. Refuses to run with ENVIRONMENT=production: production tokens come from
your identity provider.
"""

from __future__ import annotations

import argparse
import sys
import time
from uuid import UUID, uuid4

import jwt

from apps.api.settings_errors import load_settings as get_settings  # one line per refused setting, no value


def mint(user_id: UUID, roles: list[str], ttl: int) -> str:
    settings = get_settings()
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + ttl}
    if roles:
        claims["roles"] = roles
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret_key.get_secret_value(), algorithm=settings.jwt_algorithm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--user", type=UUID, default=None, help="the user id (sub); a new one by default")
    parser.add_argument("--role", action="append", default=[], help="a role claim, e.g. admin (repeatable)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    args = parser.parse_args(argv)
    if get_settings().environment == "production":
        print("refusing to mint tokens with ENVIRONMENT=production", file=sys.stderr)
        return 2
    print(mint(args.user or uuid4(), args.role, args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
