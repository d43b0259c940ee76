"""Entry point. ``python apps/api/main.py`` (or ``cd apps/api && python main.py``) serves on
``HOST``:``PORT`` (0.0.0.0:8000) with ``WORKERS`` processes (1; more need ``REDIS_URL``);
``uvicorn apps.api.main:app`` works too. Settings that cannot be used stop the start either
way, with one line each on stderr naming the setting and why (never its value), and status 2."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make `apps.api` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.api.app import create_app
from apps.api.logging_setup import configure_logging
from apps.api.serving import uvicorn_options
from apps.api.settings_errors import load_settings


def run() -> None:
    import uvicorn

    settings = load_settings()
    configure_logging(settings)  # the parent process's lines too (with WORKERS > 1 it serves nothing)
    options = uvicorn_options(settings)
    if settings.workers > 1:
        uvicorn.run("apps.api.main:app", workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    run()
elif __name__ != "__mp_main__":  # not when a worker process re-imports this script
    app = create_app(load_settings())
