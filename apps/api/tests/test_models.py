"""Event models: the envelope matches the card's payload example; payloads validate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
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
