"""``python -m apps.api.db upgrade``: apply the migrations to ``DATABASE_URL`` (what the service
also does at start-up). ``python -m apps.api.db current`` prints the database's revision."""

from __future__ import annotations

import argparse
import asyncio

from apps.api.db.engine import database_url
from apps.api.db.migrate import current_revision, on_url, upgrade
from apps.api.settings_errors import load_settings as get_settings  # one line per refused setting, no value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m apps.api.db", description=__doc__)
    parser.add_argument("action", choices=["upgrade", "current"])
    parser.add_argument("--revision", default="head", help="upgrade to this revision (default: head)")
    args = parser.parse_args()
    url = get_settings().database_url
    shown = database_url(url).render_as_string(hide_password=True)
    if args.action == "upgrade":
        asyncio.run(on_url(url, lambda engine: upgrade(engine, args.revision)))
    revision = asyncio.run(on_url(url, current_revision))
    print(f"{shown}: at revision {revision or '(none)'}")


if __name__ == "__main__":
    main()
