"""What a GitHub webhook delivery means for the service: which event to publish, if any.

Pure: no I/O, and nothing from the web framework, Socket.IO, the database or Redis.
:func:`map_delivery` takes the ``X-GitHub-Event`` header and the decoded JSON body and gives
either :class:`Mapped` (the ``broadcast_*`` method to call, its arguments, and the repository's
keys) or :class:`Ignored` (why nothing is published). It never raises for a malformed body.

:func:`normalize_repository` turns every form of a repository's address (web page, clone URLs,
``owner/name``) into the one key ``host/owner/name``; deliveries are matched to projects on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from apps.api.websocket.models import EventType

#: Limits of the payload models' ``Name``, ``Text`` and ``Url`` fields.
NAME_MAX = 512
TEXT_MAX = 65_536
URL_MAX = 2048

#: The host of a repository named only ``owner/name``.
DEFAULT_HOST = "github.com"

#: The repository's address fields that name it (not ``url``: that is its api.github.com address).
_URL_FIELDS = ("html_url", "clone_url", "ssh_url", "git_url", "svn_url")
_SCHEMES = frozenset({"http", "https", "ssh", "git", "git+ssh"})
_SCP = re.compile(r"[^@/\s]+@([^:/\s]+):([^\s]*)")  # user@host:owner/name.git
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")  # an owner's or a repository's name

#: Of a whole GitHub object inside ``changes`` (an issue, a repository...), what is kept.
_SUMMARY_KEYS = ("id", "number", "name", "full_name", "title", "html_url")
_CHANGES_DEPTH = 4
_CHANGES_ITEMS = 50


@dataclass(frozen=True)
class Mapped:
    """Publish ``event_type`` by calling the broadcaster's ``method`` with ``fields`` (plus the
    matched project's ``project_id`` and a ``source``)."""

    event_type: EventType
    method: str
    fields: dict[str, Any]
    #: The delivery's repository as keys (:func:`repository_keys`), to find its projects by.
    repository: frozenset[str]


@dataclass(frozen=True)
class Ignored:
    """Nothing to publish; ``reason`` is a sentence for the webhook's reply."""

    reason: str


class _Malformed(Exception):
    """A part of the payload is missing or of the wrong type; the message says which."""


def map_delivery(event: str, payload: Mapping[str, Any]) -> Mapped | Ignored:
    """The service event a delivery of GitHub ``event`` (the ``X-GitHub-Event`` header) with
    body ``payload`` stands for, or why there is none."""
    if event == "ping":
        return Ignored("GitHub's ping: the webhook is set up; a ping has nothing to publish.")
    mapper = _MAPPERS.get(event)
    if mapper is None:
        return Ignored(f"GitHub event {str(event)[:100]!r} is not one this service publishes (pull_request, issues)")
    try:
        if not isinstance(payload, Mapping):
            raise _Malformed("the body is not a JSON object")
        action = _text(payload, "action")
        repository = repository_keys(_object(payload, "repository"))
        if not repository:
            raise _Malformed("its repository has no address this service recognises")
        return mapper(action[:NAME_MAX], payload, repository)
    except _Malformed as problem:
        return Ignored(f"This {event} delivery cannot be published: {problem}.")


def normalize_repository(text: str) -> str | None:
    """``host/owner/name``, lowercase, of a repository's address in any form GitHub uses:
    ``https://github.com/Owner/Repo`` (optionally ``.git`` or a trailing ``/``),
    ``git@github.com:Owner/Repo.git``, ``ssh://git@github.com/Owner/Repo.git``,
    ``git://github.com/Owner/Repo.git``, or ``Owner/Repo`` (on github.com). None for other text."""
    if not isinstance(text, str) or len(text) > URL_MAX:
        return None
    text = text.strip()
    if (scp := _SCP.fullmatch(text)) is not None:
        host, path = scp[1], _inner(scp[2])
    elif "://" in text:
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
        except ValueError:  # e.g. an unclosed "[" in the host
            return None
        if parts.scheme.lower() not in _SCHEMES:
            return None
        path = _inner(parts.path)
    else:
        host, path = DEFAULT_HOST, text
    host = host.lower().rstrip(".").removeprefix("www.")
    segments = path.split("/")
    if not _HOST.fullmatch(host) or len(segments) != 2:
        return None
    owner, name = segments[0], segments[1].removesuffix(".git")
    if not (_SEGMENT.fullmatch(owner) and _SEGMENT.fullmatch(name)) or name in (".", ".."):
        return None
    return f"{host}/{owner}/{name}".lower()


def repository_keys(repository: Mapping[str, Any]) -> frozenset[str]:
    """The keys (:func:`normalize_repository`) of a webhook's ``repository`` object: of its
    addresses, and of its ``full_name`` on the addresses' host (so a GitHub Enterprise repository
    is never taken for a github.com one of the same name). Normally a single key."""
    if not isinstance(repository, Mapping):
        return frozenset()
    keys = {key for field in _URL_FIELDS if (key := _key_of(repository.get(field))) is not None}
    full_name = _key_of(repository.get("full_name"))
    if full_name is not None:
        owner_name = full_name.partition("/")[2]
        keys |= {f"{host}/{owner_name}" for host in {key.partition("/")[0] for key in keys} or {DEFAULT_HOST}}
    return frozenset(keys)


def _key_of(value: Any) -> str | None:
    return normalize_repository(value) if isinstance(value, str) else None


# --- the two events ------------------------------------------------------------------------


def _pull_request(action: str, payload: Mapping[str, Any], repository: frozenset[str]) -> Mapped | Ignored:
    pr = _object(payload, "pull_request")
    merged = pr.get("merged") is True or (pr.get("merged") is None and pr.get("merged_at") is not None)
    closed = action == "closed" or pr.get("state") == "closed"  # e.g. "labeled" on a closed PR
    fields: dict[str, Any] = {
        "pr_id": _identifier(pr, "pull_request.id"),
        "pr_number": _number(pr, "pull_request.number"),
        "title": _text(pr, "pull_request.title"),
        "description": _optional_text(pr, "pull_request.body"),
        "author": _text(_object(pr, "pull_request.user"), "pull_request.user.login"),
        "branch": _text(_object(pr, "pull_request.head"), "pull_request.head.ref"),
        "github_url": _url(pr, "pull_request.html_url"),
        "created_at": _time(pr, "pull_request.created_at"),
        "status": ("merged" if merged else "closed") if closed else "open",
    }
    if action == "opened":
        return _mapped(EventType.PR_CREATED, fields, repository)
    if action == "closed":
        fields["closed_at"] = _time(pr, "pull_request.closed_at", required=False)
        return _mapped(EventType.PR_CLOSED, fields, repository)
    return _mapped(EventType.PR_UPDATED, {**fields, "changes": _changes(action, payload)}, repository)


def _issue(action: str, payload: Mapping[str, Any], repository: frozenset[str]) -> Mapped | Ignored:
    issue = _object(payload, "issue")
    number = _number(issue, "issue.number")
    if issue.get("pull_request") is not None:
        # Pull requests are issues to GitHub, which has sent some of their changes (milestones)
        # as ``issues`` deliveries; pull_request deliveries publish them as PR events.
        return Ignored(f"Issue #{number} is a pull request: its changes are published from pull_request deliveries.")
    user = issue.get("user")
    fields: dict[str, Any] = {
        "issue_id": _identifier(issue, "issue.id"),
        "issue_number": number,
        "title": _text(issue, "issue.title"),
        "description": _optional_text(issue, "issue.body"),
        "status": "closed" if issue.get("state") == "closed" else "open",
        "author": (_optional_text(user, "issue.user.login", NAME_MAX) or None) if isinstance(user, Mapping) else None,
        "github_url": _url(issue, "issue.html_url"),
    }
    if action == "opened":
        return _mapped(EventType.ISSUE_CREATED, fields, repository)
    if action in ("closed", "deleted"):
        # A deleted issue is gone for clients, as a closed one is off their list of open issues:
        # both are issue.closed. (That event's status is always "closed"; its method takes none.)
        del fields["status"]
        return _mapped(EventType.ISSUE_CLOSED, fields, repository)
    return _mapped(EventType.ISSUE_UPDATED, {**fields, "changes": _changes(action, payload)}, repository)


_MAPPERS: dict[str, Callable[[str, Mapping[str, Any], frozenset[str]], Mapped | Ignored]] = {
    "pull_request": _pull_request,
    "issues": _issue,
}


def _mapped(event_type: EventType, fields: dict[str, Any], repository: frozenset[str]) -> Mapped:
    method = "broadcast_" + event_type.value.replace(".", "_")  # pr.created -> broadcast_pr_created
    return Mapped(event_type=event_type, method=method, fields=fields, repository=repository)


def _changes(action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``{"action": action}`` plus what GitHub's ``changes`` says (e.g. ``{"title": {"from":
    ...}}`` on ``edited``), with whole objects (a transferred issue's new repository...) cut down
    to who they are."""
    changes = payload.get("changes")
    extra = _compact(changes) if isinstance(changes, Mapping) else {}
    return {"action": action, **{key: value for key, value in extra.items() if key != "action"}}


def _compact(value: Any, depth: int = 0) -> Any:
    """``value`` as small JSON: long text cut, deep or big structures trimmed, non-JSON dropped."""
    if isinstance(value, str):
        return value[:TEXT_MAX]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _CHANGES_DEPTH:
        return None
    if isinstance(value, Mapping):
        if "node_id" in value:  # a whole GitHub object: its identity is enough
            items: Any = ((key, value[key]) for key in _SUMMARY_KEYS if isinstance(value.get(key), str | int))
        else:
            items = islice(value.items(), _CHANGES_ITEMS)
        return {key: _compact(item, depth + 1) for key, item in items if isinstance(key, str)}
    if isinstance(value, list | tuple):
        return [_compact(item, depth + 1) for item in value[:_CHANGES_ITEMS]]
    return None


# --- reading the payload: each helper raises _Malformed naming the part it wanted ----------


def _get(parent: Mapping[str, Any], path: str) -> Any:
    return parent.get(path.rpartition(".")[2])


def _object(parent: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    value = _get(parent, path)
    if not isinstance(value, Mapping):
        raise _Malformed(f"{path} is missing or not an object")
    return value


def _text(parent: Mapping[str, Any], path: str, limit: int = NAME_MAX) -> str:
    value = _get(parent, path)
    if not isinstance(value, str) or not value:
        raise _Malformed(f"{path} is missing or not text")
    return value[:limit]


def _optional_text(parent: Mapping[str, Any], path: str, limit: int = TEXT_MAX) -> str | None:
    value = _get(parent, path)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{path} is not text")
    return value[:limit]


def _number(parent: Mapping[str, Any], path: str) -> int:
    value = _get(parent, path)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Malformed(f"{path} is missing or not a positive whole number")
    return value


def _identifier(parent: Mapping[str, Any], path: str) -> int | str:
    value = _get(parent, path)
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    return _number(parent, path)


def _url(parent: Mapping[str, Any], path: str) -> str:
    value = _get(parent, path)
    if not isinstance(value, str) or not 0 < len(value) <= URL_MAX:
        raise _Malformed(f"{path} is missing or not an address")
    return value


def _time(parent: Mapping[str, Any], path: str, *, required: bool = True) -> datetime | None:
    value = _get(parent, path)
    if value is None and not required:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    raise _Malformed(f"{path} is missing or not an ISO 8601 time")


def _inner(path: str) -> str:
    """A URL's path without its one leading and one trailing ``/``."""
    return path.removeprefix("/").removesuffix("/")
