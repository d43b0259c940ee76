"""Log to stderr, and to ``LOG_FILE`` (rotated) when it is set, as lines of text
(``LOG_FORMAT=plain``, :data:`FORMAT`) or one JSON object a line (``LOG_FORMAT=json``,
:class:`JsonFormatter`). Idempotent.

Tokens sent in a query string (``?token=...``) would otherwise appear in uvicorn's request lines:
:class:`RedactTokens` blanks them in every record that reaches our handlers or uvicorn's loggers.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apps.api.config import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_MARK = "_event_service_handler"
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;\s\"'])(?:token|access_token)=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` / ``access_token=`` parameter replaced by ``[redacted]``."""
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text) if "token=" in text.lower() else text


class RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` / ``access_token=`` query parameters with ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg = redact(message)
            record.args = ()
        return True


#: ``key=value`` in a message (``sid=Xy… user=660e… reason=client disconnect``): a value runs to
#: the next `` key=``, or to ``: ``, ``; ``, ``, `` or the end of the line.
_FIELD = re.compile(r"(?<!\S)([a-z][a-z0-9_]*)=(.*?)(?=\s+[a-z][a-z0-9_]*=|[:;,](?:\s|$)|\n|$)")
#: The attributes every LogRecord has: any other was given with ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: The fields of every JSON line, which context never overwrites.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception", "stack"})
#: What libraries pass with ``extra=`` that is no context (uvicorn: its message with colour codes).
_NOT_CONTEXT = frozenset({"color_message"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
    ``message`` (the same text as the plain format's, ``sid=…`` included), then the context: each
    ``key=value`` of the message as a string field (``"sid": "Xy…"``), and every ``extra=`` of the
    log call (which wins over a field of the same name); ``exception`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if "=" in message:
            for key, value in _FIELD.findall(message):
                if key not in _RESERVED:
                    line.setdefault(key, value)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in _RESERVED and key not in _NOT_CONTEXT and key[:1] != "_":
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else logging.Formatter(FORMAT)


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
        handler.setFormatter(_formatter(settings))
        handler.addFilter(_REDACT)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's CLI gives its loggers handlers of their own that bypass ours.
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
