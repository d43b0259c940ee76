"""Log to stderr, and to ``LOG_FILE`` (rotated) when it is set. Idempotent."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from apps.api.config import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_MARK = "_event_service_handler"


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        path = Path(settings.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(path, maxBytes=10_000_000, backupCount=5, encoding="utf-8")
        )
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
