"""Log to stderr, and to ``LOG_FILE`` (rotated) when it is set. Idempotent.

Tokens sent in a query string (``?token=...``) would otherwise appear in uvicorn's request lines:
:class:`RedactTokens` blanks them in every record that reaches our handlers or uvicorn's loggers.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

from apps.api.config import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_MARK = "_event_service_handler"
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;\s\"'])(?:token|access_token)=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` / ``access_token=`` query parameters with ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg = _TOKEN_IN_QUERY.sub(r"\1[redacted]", message)
            record.args = ()
        return True


_REDACT = RedactTokens()


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
        handler.addFilter(_REDACT)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's CLI gives its loggers handlers of their own that bypass ours.
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
