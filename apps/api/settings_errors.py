"""Settings that cannot be used, told at start-up in one line each, never with their values.

pydantic's ``ValidationError`` prints every refused value (``input_value=...``): a short
``JWT_SECRET_KEY``, a ``REDIS_URL`` or ``DATABASE_URL`` with its password. The entry points load
the settings through :func:`load_settings`, which prints instead, on stderr::

    invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production
    invalid setting PORT: Input should be a valid integer, unable to parse string as an integer

and exits with status 2 (the usual status of a usage error), without a traceback.
"""

from __future__ import annotations

import re
import sys
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from apps.api.config import DEFAULT_JWT_SECRET, Settings, get_settings

#: The exit status of a process refused by its settings.
EXIT_INVALID_SETTINGS = 2
#: Every variable a setting is read from.
SETTING_NAMES = frozenset(name.upper() for name in Settings.model_fields)
#: Settings whose values are secrets (SecretStr): never printed, wherever a message would put them.
SECRET_FIELDS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
)
_LEADING_NAME = re.compile(r"(?P<name>[A-Z][A-Z0-9_]*)(?P<rest>.*)", re.S)
#: pydantic's prefixes of messages raised by validators: the rest is the validator's own message.
_VALIDATOR_PREFIXES = ("Value error, ", "Assertion failed, ")


def describe(error: ValidationError) -> list[str]:
    """One line per refused setting: its name and why, with no value in it."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        message = str(item["msg"])
        for prefix in _VALIDATOR_PREFIXES:
            message = message.removeprefix(prefix)
        name = _setting_of(item["loc"], message)
        line = f"invalid setting {name}: {_reason(name, message)}" if name else f"invalid settings: {message}"
        line = _without(line, _values_in(item["loc"], item.get("input")))
        if line not in lines:
            lines.append(line)
    return lines


def load_settings() -> Settings:
    """The process's settings (:func:`apps.api.config.get_settings`); when they cannot be used,
    print why on stderr (:func:`describe`) and exit with status 2."""
    try:
        return get_settings()
    except ValidationError as exc:
        lines = describe(exc)
    except SettingsError as exc:  # pydantic-settings' own: a value it could not parse, SECRETS_DIR a file
        lines = [f"invalid settings: {exc}"]
    except OSError as exc:  # a secret file or .env that cannot be read: its path, never its content
        lines = [f"invalid settings: cannot read {exc.filename or 'a settings file'}: {exc.strerror or exc}"]
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INVALID_SETTINGS)


def _setting_of(loc: tuple[int | str, ...], message: str) -> str | None:
    """The variable a refusal is about: the field's, or, for a check of several settings (which
    pydantic locates nowhere), the setting the message starts with (``JWT_SECRET_KEY is ...``)."""
    if loc:
        return str(loc[0]).upper()
    match = _LEADING_NAME.match(message)
    if match and match["name"] in SETTING_NAMES:
        return match["name"]
    return None


def _reason(name: str, message: str) -> str:
    """The message without the setting's name in front (the line already names it)."""
    for lead in (f"{name} is ", f"{name} "):
        if message.startswith(lead):
            message = message[len(lead) :]
            break
    return message.rstrip(". ")


def _values_in(loc: tuple[int | str, ...], value: Any) -> set[str]:
    """What of a refused input must never be printed, should a message ever quote it: the values
    of the secret settings in it, and the passwords of the URLs in it."""
    if isinstance(value, dict):
        items = list(value.items())  # a check of several settings: its input is all of them
    else:
        items = [(loc[0] if loc else "", value)]
    found: set[str] = set()
    for field, item in items:
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        if not isinstance(item, str):
            continue
        if field in SECRET_FIELDS and item != DEFAULT_JWT_SECRET:  # the default is published
            found.add(item)
        if "://" in item:
            try:
                password = urlsplit(item).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    return {text for text in found if text.strip()}


def _without(line: str, values: set[str]) -> str:
    """``line`` with each of ``values`` replaced where it stands as a word of its own (a secret
    ``short`` is not in "shorter than 32 bytes")."""
    for value in sorted(values, key=len, reverse=True):
        line = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", "[redacted]", line)
    return line
