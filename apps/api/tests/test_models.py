"""Event models: the envelope matches the card's payload example; payloads validate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from apps.api.websocket.models import (
    PAYLOADS,
    AgentStatusChangedData,
    AiSuggestionData,
    Event,
    EventType,
    ProjectUpdatedData,
    WorkflowProgressData,
)

CARD_EXAMPLE = {
    "type": "project.updated",
    "timestamp": "2024-11-08T10:30:00Z",
    "source": "project_service",
    "data": {
        "project_id": "550e8400-e29b-41d4-a716-446655440000",
        "project_name": "AI Agent Framework",
        "repository_url": "https://github.com/user/ai-agent-framework",
        "status": "active",
        "updated_by": "660e8400-e29b-41d4-a716-446655440001",
        "changes": {"status": "updated", "fields": ["status"]},
    },
}


def test_card_payload_example_round_trips():
    data = ProjectUpdatedData.model_validate(CARD_EXAMPLE["data"])
    event = Event(
        type=EventType.PROJECT_UPDATED,
        timestamp=datetime(2024, 11, 8, 10, 30, tzinfo=UTC),
        source="project_service",
        data=data,
    )
    wire = event.wire()
    UUID(wire.pop("id"))
    assert wire == CARD_EXAMPLE
    json.dumps(wire)  # plain JSON types only


def test_fields_default_to_the_changed_keys():
    data = ProjectUpdatedData.model_validate({**CARD_EXAMPLE["data"], "changes": {"status": "updated", "name": "x"}})
    assert data.model_dump(mode="json")["changes"] == {"fields": ["status", "name"], "status": "updated", "name": "x"}


def test_timestamps_are_utc_with_z():
    data = AgentStatusChangedData(agent_id=UUID(int=1), agent_name="a", status="online", availability=85)
    naive = Event(type=EventType.AGENT_STATUS_CHANGED, source="s", data=data, timestamp=datetime(2024, 1, 1, 12))
    assert naive.wire()["timestamp"] == "2024-01-01T12:00:00Z"
    plus_two = datetime(2024, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    assert (
        Event(type=EventType.AGENT_STATUS_CHANGED, source="s", data=data, timestamp=plus_two).wire()["timestamp"]
        == "2024-01-01T12:00:00Z"
    )
    assert Event(type=EventType.AGENT_STATUS_CHANGED, source="s", data=data).wire()["timestamp"].endswith("Z")


def test_every_event_type_has_a_payload_model():
    assert set(PAYLOADS) == set(EventType)


@pytest.mark.parametrize(
    ("model", "fields", "where"),
    [
        (
            WorkflowProgressData,
            {"status": "running", "progress": 150, "current_step": "s", "total_steps": 5},
            "progress",
        ),
        (WorkflowProgressData, {"status": "walking", "progress": 5, "current_step": "s", "total_steps": 5}, "status"),
        (AgentStatusChangedData, {"agent_name": "a", "status": "online", "availability": -1}, "availability"),
        (
            AiSuggestionData,
            {
                "target_type": "pr",
                "target_id": "1",
                "suggestion_id": str(UUID(int=2)),
                "category": "optimization",
                "title": "t",
                "description": "d",
                "severity": "info",
                "confidence": 2,
            },
            "confidence",
        ),
    ],
)
def test_out_of_range_values_are_refused(model, fields, where):
    base = {"workflow_id": str(UUID(int=1))} if model is WorkflowProgressData else {}
    if model is AgentStatusChangedData:
        base = {"agent_id": str(UUID(int=1))}
    with pytest.raises(ValidationError) as info:
        model.model_validate({**base, **fields})
    assert info.value.errors()[0]["loc"][0] == where


def test_unknown_payload_fields_are_refused():
    with pytest.raises(ValidationError):
        ProjectUpdatedData.model_validate({**CARD_EXAMPLE["data"], "projet_name": "typo"})


def test_wire_json_is_wire_for_every_event_type():
    from apps.api.tests.test_broadcaster import issue_fields, pr_fields

    project = "550e8400-e29b-41d4-a716-446655440000"
    samples = {
        "project.updated": CARD_EXAMPLE["data"],
        "project.deleted": {"project_id": project, "deleted_by": project},
        "project.access_revoked": {
            "project_id": project,
            "room": f"project:{project}",
            "reason": "member_removed",
            "user_id": project,
            "by": project,
        },
        "agent.status_changed": {"agent_id": project, "agent_name": 'A"é\n', "status": "idle", "availability": 5.5},
        "agent.connected": {"agent_id": project, "agent_name": "A", "capabilities": ["x"]},
        "agent.disconnected": {"agent_id": project, "agent_name": "A"},
        "workflow.started": {"workflow_id": project},
        "workflow.progress": {
            "workflow_id": project,
            "status": "running",
            "progress": 50,
            "current_step": "s",
            "total_steps": 2,
            "logs": ["l"],
        },
        "workflow.completed": {"workflow_id": project, "result": {"k": [1, None, True]}},
        "workflow.failed": {"workflow_id": project, "error": "e"},
        "pr.created": pr_fields(project),
        "pr.updated": {**pr_fields(project), "changes": {"a": 1}},
        "pr.closed": {**pr_fields(project), "status": "merged"},
        "issue.created": issue_fields(project),
        "issue.updated": issue_fields(project),
        "issue.closed": issue_fields(project),
        "ai.suggestion": {
            "suggestion_id": project,
            "target_type": "pr",
            "target_id": "1",
            "category": "security",
            "title": "t",
            "description": "d",
            "severity": "info",
            "confidence": 0.5,
        },
        "ai.analysis_complete": {"analysis_id": project, "target_type": "code", "target_id": "x", "summary": "s"},
        "connection_established": {"connection_id": "c", "user_id": project, "rooms": ["global"], "instance_id": "i"},
        "token.expiring": {"expires_at": "2024-11-08T10:30:00Z", "seconds_left": 60},
        "connection.closing": {"reason": "token_expired", "message": "m"},
    }
    assert set(samples) == {t.value for t in EventType}
    for name, fields in samples.items():
        kind = EventType(name)
        data = PAYLOADS[kind].model_validate(fields)
        for stamp in (datetime(2024, 11, 8, 10, 30, tzinfo=UTC), datetime(2024, 11, 8, 10, 30, 0, 5, tzinfo=UTC)):
            event = Event(type=kind, source='svc "q"', data=data, timestamp=stamp)
            assert json.loads(event.wire_json()) == event.wire(), name
        built = Event.of(kind, "svc", data)
        assert json.loads(built.wire_json()) == built.wire()


def test_event_ids_are_version_4_uuids_and_unique():
    ids = {
        Event.of(
            EventType.AGENT_CONNECTED,
            "s",
            PAYLOADS[EventType.AGENT_CONNECTED].model_validate({"agent_id": str(UUID(int=1)), "agent_name": "a"}),
        ).id
        for _ in range(2000)
    }
    assert len(ids) == 2000
    for text in list(ids)[:50]:
        parsed = UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, "specified in RFC 4122", text)


# The per-emit path (issue 12): Event.of builds the envelope without model_construct, wire_json
# writes ids, sources and timestamps without json.dumps and isoformat when it can. What they
# produce must be what the straightforward code produces, byte for byte.


def reference_wire_json(event: Event) -> str:
    """The envelope's JSON as the plain calls make it (wire_json before issue 12)."""
    timestamp = event.timestamp.isoformat().replace("+00:00", "Z")
    return (
        f'{{"id":{json.dumps(event.id)},"type":"{event.type.value}","timestamp":"{timestamp}",'
        f'"source":{json.dumps(event.source)},"data":{event.data.model_dump_json()}}}'
    )


texts = st.text(min_size=1, max_size=40)
stamps = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.timezones())


@settings(max_examples=300, deadline=None)
@given(event_id=texts, source=texts, stamp=stamps, name=texts, task=st.none() | st.text(max_size=80))
def test_wire_json_is_byte_for_byte_what_the_plain_calls_make(event_id, source, stamp, name, task):
    data = AgentStatusChangedData(
        agent_id=UUID(int=7), agent_name=name, status="busy", availability=12.5, current_task=task
    )
    event = Event(id=event_id, type=EventType.AGENT_STATUS_CHANGED, source=source, data=data, timestamp=stamp)
    assert event.wire_json() == reference_wire_json(event)


@settings(max_examples=200, deadline=None)
@given(source=texts)
def test_event_of_is_what_model_construct_makes(source):
    data = AgentStatusChangedData(agent_id=UUID(int=7), agent_name="a", status="busy", availability=5)
    try:
        built = Event.of(EventType.AGENT_STATUS_CHANGED, source, data)
    except ValidationError:
        with pytest.raises(ValidationError):
            Event.model_validate({"type": "agent.status_changed", "source": source, "data": data})
        return
    made = Event.model_construct(
        id=built.id, type=built.type, timestamp=built.timestamp, source=built.source, data=data
    )
    assert built == made
    assert built.model_fields_set == made.model_fields_set
    assert (
        built.__pydantic_extra__ == made.__pydantic_extra__ and built.__pydantic_private__ == made.__pydantic_private__
    )
    assert built.wire() == made.wire() and built.wire_json() == made.wire_json() == reference_wire_json(made)
    assert built.model_copy(update={"source": "x"}).source == "x"


def test_the_pydantic_internals_event_of_sets_are_all_an_instance_has():
    """Event.of sets a model's four slots itself: a pydantic that adds one fails here (then
    Event.of must set it too, or go back to model_construct)."""
    from pydantic import BaseModel

    assert BaseModel.__slots__ == ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    assert "__new__" not in vars(BaseModel)


def test_a_source_is_still_validated_once_known():
    data = AgentStatusChangedData(agent_id=UUID(int=7), agent_name="a", status="busy", availability=5)
    for _ in range(2):
        with pytest.raises(ValidationError):
            Event.of(EventType.AGENT_STATUS_CHANGED, "", data)
        with pytest.raises(ValidationError):
            Event.of(EventType.AGENT_STATUS_CHANGED, "x" * 600, data)
