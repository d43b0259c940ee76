"""Entry point. ``python apps/api/main.py`` (or ``cd apps/api && python main.py``) serves on
``HOST``:``PORT`` (0.0.0.0:8000); ``uvicorn apps.api.main:app`` works too."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make `apps.api` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apps.api.app import create_app
from apps.api.config import get_settings


def run() -> None:
    import uvicorn

    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    run()
else:
    app = create_app()
