"""Pydantic models for every event the server sends: the envelope and one payload per type.

A leaf module: it imports only pydantic and the standard library. On the wire ids are strings and
timestamps ISO 8601 UTC (``2024-11-08T10:30:00Z``); :meth:`Event.wire` gives that JSON-ready form.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

PROTOCOL_VERSION = "1.0"


class EventType(StrEnum):
    PROJECT_UPDATED = "project.updated"
    PROJECT_DELETED = "project.deleted"
    PROJECT_ACCESS_REVOKED = "project.access_revoked"
    AGENT_STATUS_CHANGED = "agent.status_changed"
    AGENT_CONNECTED = "agent.connected"
    AGENT_DISCONNECTED = "agent.disconnected"
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_PROGRESS = "workflow.progress"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    PR_CREATED = "pr.created"
    PR_UPDATED = "pr.updated"
    PR_CLOSED = "pr.closed"
    ISSUE_CREATED = "issue.created"
    ISSUE_UPDATED = "issue.updated"
    ISSUE_CLOSED = "issue.closed"
    AI_SUGGESTION = "ai.suggestion"
    AI_ANALYSIS_COMPLETE = "ai.analysis_complete"
    CONNECTION_ESTABLISHED = "connection_established"
    TOKEN_EXPIRING = "token.expiring"
    CONNECTION_CLOSING = "connection.closing"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_event_id() -> str:
    """A random (version 4) UUID as text. Event ids identify, they protect nothing: drawn from
    ``random`` (seeded from the OS once) rather than ``os.urandom`` per id, which costs a system
    call."""
    h = "%032x" % ((random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: A timestamp, stored in UTC (naive values are taken as UTC).
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
#: An external id (GitHub numbers, UUIDs, ...), always a string on the wire.
ExternalId = Annotated[
    str, BeforeValidator(lambda v: str(v) if isinstance(v, UUID | int) else v), Field(min_length=1, max_length=128)
]
Name = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(max_length=65_536)]
Url = Annotated[str, Field(min_length=1, max_length=2048)]
Percent = Annotated[int | float, Field(ge=0, le=100)]

AgentStatus = Literal["online", "offline", "busy", "idle", "error"]
WorkflowStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
IssueStatus = Literal["open", "in_progress", "closed", "blocked"]
IssuePriority = Literal["low", "medium", "high", "critical"]
PrStatus = Literal["open", "merged", "closed"]
AiTargetType = Literal["issue", "pr", "code"]
AiCategory = Literal["optimization", "refactor", "bug_fix", "security", "performance", "maintainability"]
AiSeverity = Literal["info", "warning", "critical"]


class Payload(BaseModel):
    """Base of every ``data`` model: unknown fields are refused, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- project -------------------------------------------------------------------------------


class ProjectChanges(BaseModel):
    """What changed: free-form entries plus ``fields``, the names of the changed fields.

    ``fields`` defaults to the other keys, so ``{"status": "updated"}`` becomes
    ``{"status": "updated", "fields": ["status"]}`` (the card's payload example).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    fields: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_fields(cls, value: Any) -> Any:
        if isinstance(value, dict) and "fields" not in value:
            return {**value, "fields": [key for key in value if isinstance(key, str)]}
        return value


class ProjectUpdatedData(Payload):
    project_id: UUID
    project_name: Name
    repository_url: Url | None = None
    status: Name
    updated_by: UUID
    changes: ProjectChanges = Field(default_factory=ProjectChanges)


class ProjectDeletedData(Payload):
    project_id: UUID
    project_name: Name | None = None
    deleted_by: UUID


class ProjectAccessRevokedData(Payload):
    """Sent to each connection the server takes out of ``room``: its user was removed from the
    project (``member_removed``), or the project was deleted (``project_deleted``). No event of
    the project follows; subscribing again is refused while the user is not a member."""

    project_id: UUID
    room: Name
    reason: Literal["member_removed", "project_deleted"]
    user_id: UUID | None = None  # the member removed (member_removed)
    by: UUID  # who removed them, or deleted the project


# --- agent ---------------------------------------------------------------------------------


class AgentStatusChangedData(Payload):
    agent_id: UUID
    agent_name: Name
    status: AgentStatus
    availability: Percent
    previous_status: AgentStatus | None = None
    current_task: Text | None = None


class AgentConnectedData(Payload):
    agent_id: UUID
    agent_name: Name
    capabilities: list[Name] = Field(default_factory=list)
    version: Name | None = None


class AgentDisconnectedData(Payload):
    agent_id: UUID
    agent_name: Name
    reason: Text | None = None


# --- workflow ------------------------------------------------------------------------------


class WorkflowData(Payload):
    """Common to workflow events. ``project_id`` and ``user_id`` (who started it) decide who
    receives it; when both are absent, the rooms recorded for the workflow by an earlier event
    are used."""

    workflow_id: UUID
    project_id: UUID | None = None
    user_id: UUID | None = None


class WorkflowStartedData(WorkflowData):
    workflow_name: Name | None = None
    status: WorkflowStatus = "running"
    total_steps: int | None = Field(default=None, ge=1)


class WorkflowProgressData(WorkflowData):
    status: WorkflowStatus
    progress: Percent
    current_step: Name
    total_steps: int = Field(ge=1)
    current_step_number: int | None = Field(default=None, ge=0)
    estimated_time_remaining: float | None = Field(default=None, ge=0)
    logs: list[Text] = Field(default_factory=list)
    errors: list[Text] = Field(default_factory=list)


class WorkflowCompletedData(WorkflowData):
    status: Literal["completed"] = "completed"
    duration_seconds: float | None = Field(default=None, ge=0)
    result: dict[str, Any] = Field(default_factory=dict)


class WorkflowFailedData(WorkflowData):
    status: Literal["failed", "cancelled"] = "failed"
    error: Text
    failed_step: Name | None = None
    errors: list[Text] = Field(default_factory=list)


# --- pull requests -------------------------------------------------------------------------


class PrData(Payload):
    pr_id: ExternalId
    project_id: UUID
    title: Name
    description: Text | None = None
    author: Name
    branch: Name
    github_url: Url
    status: PrStatus = "open"
    created_at: UtcDatetime
    pr_number: int | None = Field(default=None, ge=1)


class PrUpdatedData(PrData):
    changes: dict[str, Any] = Field(default_factory=dict)


class PrClosedData(PrData):
    status: Literal["merged", "closed"] = "closed"
    closed_at: UtcDatetime | None = None


# --- issues --------------------------------------------------------------------------------


class IssueData(Payload):
    issue_id: ExternalId
    project_id: UUID
    title: Name
    description: Text | None = None
    status: IssueStatus = "open"
    priority: IssuePriority = "medium"
    assigned_to: UUID | None = None
    created_by: UUID | None = None
    #: Where the issue lives, when it comes from GitHub (its number, page and author's login).
    issue_number: int | None = Field(default=None, ge=1)
    github_url: Url | None = None
    author: Name | None = None


class IssueUpdatedData(IssueData):
    changes: dict[str, Any] = Field(default_factory=dict)


class IssueClosedData(IssueData):
    status: IssueStatus = "closed"
    closed_by: UUID | None = None


# --- AI --------------------------------------------------------------------------------------


class AiData(Payload):
    """``project_id`` routes to the project's room; without it, ``user_id`` to that user's room;
    without both, to admins only."""

    project_id: UUID | None = None
    user_id: UUID | None = None
    target_type: AiTargetType
    target_id: ExternalId


class AiSuggestionData(AiData):
    suggestion_id: UUID
    category: AiCategory
    title: Name
    description: Text
    severity: AiSeverity
    confidence: float = Field(ge=0, le=1)
    suggested_action: Text | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AiAnalysisCompleteData(AiData):
    analysis_id: UUID
    summary: Text
    suggestions_count: int = Field(default=0, ge=0)
    duration_seconds: float | None = Field(default=None, ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)


# --- connection ----------------------------------------------------------------------------


class ConnectionEstablishedData(Payload):
    connection_id: str
    user_id: UUID
    rooms: list[str]
    instance_id: str
    protocol_version: str = PROTOCOL_VERSION
    server_time: UtcDatetime = Field(default_factory=utc_now)


class TokenExpiringData(Payload):
    """Sent to one connection ``TOKEN_EXPIRY_WARNING_SECONDS`` before its token expires: hand a
    fresh one over with ``auth:refresh`` (or reconnect with one) before ``expires_at``."""

    expires_at: UtcDatetime
    seconds_left: float


class ConnectionClosingData(Payload):
    """Sent to one connection just before the server closes it (the client then sees
    ``disconnect`` with reason ``"io server disconnect"`` and does not reconnect by itself).
    ``reason``: ``token_expired`` (reconnect with a fresh token), ``rate_limited`` (it kept
    sending past its limit), ``disconnected`` (an admin or a service closed it; ``by`` says who)."""

    reason: Name
    message: str = Field(max_length=500)
    by: UUID | None = None


#: The payload model of every event type.
PAYLOADS: dict[EventType, type[Payload]] = {
    EventType.PROJECT_UPDATED: ProjectUpdatedData,
    EventType.PROJECT_DELETED: ProjectDeletedData,
    EventType.PROJECT_ACCESS_REVOKED: ProjectAccessRevokedData,
    EventType.AGENT_STATUS_CHANGED: AgentStatusChangedData,
    EventType.AGENT_CONNECTED: AgentConnectedData,
    EventType.AGENT_DISCONNECTED: AgentDisconnectedData,
    EventType.WORKFLOW_STARTED: WorkflowStartedData,
    EventType.WORKFLOW_PROGRESS: WorkflowProgressData,
    EventType.WORKFLOW_COMPLETED: WorkflowCompletedData,
    EventType.WORKFLOW_FAILED: WorkflowFailedData,
    EventType.PR_CREATED: PrData,
    EventType.PR_UPDATED: PrUpdatedData,
    EventType.PR_CLOSED: PrClosedData,
    EventType.ISSUE_CREATED: IssueData,
    EventType.ISSUE_UPDATED: IssueUpdatedData,
    EventType.ISSUE_CLOSED: IssueClosedData,
    EventType.AI_SUGGESTION: AiSuggestionData,
    EventType.AI_ANALYSIS_COMPLETE: AiAnalysisCompleteData,
    EventType.CONNECTION_ESTABLISHED: ConnectionEstablishedData,
    EventType.TOKEN_EXPIRING: TokenExpiringData,
    EventType.CONNECTION_CLOSING: ConnectionClosingData,
}

#: Events the server itself sends (to one connection, or as part of a change it makes): nobody
#: publishes them through the broadcaster or the publish API.
SERVER_ONLY = frozenset(
    {
        EventType.CONNECTION_ESTABLISHED,
        EventType.PROJECT_ACCESS_REVOKED,
        EventType.TOKEN_EXPIRING,
        EventType.CONNECTION_CLOSING,
    }
)


_SOURCE: TypeAdapter[str] = TypeAdapter(Name)


class Event(BaseModel):
    """The envelope every server event travels in: ``{id, type, timestamp, source, data}``."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=new_event_id)
    type: EventType
    timestamp: UtcDatetime = Field(default_factory=utc_now)
    source: Name
    data: Payload

    @classmethod
    def of(cls, type: EventType, source: str, data: Payload) -> Event:
        """A new event around an already validated payload (no second validation pass): what
        ``model_construct`` makes, without its walk over the fields' defaults (the broadcaster's
        path builds one per emit; ``test_models`` checks the two agree)."""
        if source not in _VALID_SOURCES:
            source = _SOURCE.validate_python(source)
            if len(_VALID_SOURCES) < _MAX_VALID_SOURCES:
                _VALID_SOURCES.add(source)
        event = _new_event(cls)
        _set(
            event,
            "__dict__",
            {"id": new_event_id(), "type": type, "timestamp": utc_now(), "source": source, "data": data},
        )
        _set(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", None)
        return event

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent to clients (UUIDs and datetimes already strings)."""
        return self.model_dump(mode="json", serialize_as_any=True)

    def wire_json(self) -> str:
        """:meth:`wire` as JSON text. The payload is serialised by its own (concrete) model, which
        pydantic does several times faster than through the envelope's ``Payload`` field."""
        data = self.data
        return (
            f'{{"id":{json_string(self.id)},"type":"{TYPE_TEXT[self.type]}","timestamp":"{timestamp_text(self.timestamp)}",'
            f'"source":{json_string(self.source)},"data":{data.__pydantic_serializer__.to_json(data).decode()}}}'
        )


def timestamp_text(value: datetime) -> str:
    """``value.isoformat()`` with ``Z`` for ``+00:00`` (an aware UTC datetime, as every event's
    timestamp is): its text up to the second is worked out once per second."""
    if value.tzinfo is not UTC:
        return value.isoformat().replace("+00:00", "Z")
    global _last_second
    second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    cached = _last_second
    if second != cached[0]:
        # one tuple, replaced whole: a thread reading it meanwhile sees the old pair or the new
        cached = _last_second = (second, value.replace(microsecond=0, tzinfo=None).isoformat())
    micro = value.microsecond
    return f"{cached[1]}.{micro:06d}Z" if micro else f"{cached[1]}Z"


_last_second: tuple[tuple[int, ...] | None, str] = (None, "")


def json_string(text: str) -> str:
    """``json.dumps(text)``, without the call for text that needs no escaping (printable ASCII
    with no quote or backslash: event ids, sources): the same characters either way."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


#: Each event type's name, read once (an enum's ``.value`` is a descriptor call).
TYPE_TEXT = {kind: kind.value for kind in EventType}

_EVENT_FIELDS = frozenset(Event.model_fields)
_new_event = BaseModel.__new__
_set = object.__setattr__
#: Sources already validated (the defaults, and what callers name), so each is checked once.
_VALID_SOURCES: set[str] = set()
_MAX_VALID_SOURCES = 1024
