"""The recovery module's history, sessions and client detection, on a clock the test moves."""

from __future__ import annotations

from apps.transport.recovery import (
    MemoryHistory,
    MemorySessions,
    Session,
    format_offset,
    parse_offset,
    speaks_recovery,
    stamped,
    without_offset,
)

HEAD = '2/ws,["e",'


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_offsets_order_within_one_millisecond_and_across():
    clock = Clock()
    history = MemoryHistory(max_events=100, max_age=60, clock=clock)
    first, packet = history.append("/ws", "r", HEAD, "{}")
    second, _ = history.append("/ws", "r", HEAD, "{}")
    clock.now += 0.002
    third, _ = history.append("/ws", "r", HEAD, "{}")
    assert first < second < third and first[0] == second[0]
    offset = format_offset(first)
    assert packet == f'{HEAD}{{"offset":"{offset}"}},"{offset}"]'  # in the object, and after it
    assert parse_offset(format_offset(third)) == third
    for bad in ("", "1", "a-1", "1-b", "-1", "1-", "1-2-3", "\u0661-\u0662", 5, None, "9" * 50 + "-1"):
        assert parse_offset(bad) is None


def test_an_object_argument_is_stamped_with_its_offset_and_anything_else_left_alone():
    assert stamped('{"a":1}', "5-0") == '{"a":1,"offset":"5-0"}'
    assert stamped("{ }", "5-0") == '{"offset":"5-0"}'
    assert stamped("[1]", "5-0") == "[1]" and stamped('"text"', "5-0") == '"text"'
    assert without_offset(f'{HEAD}{{"a":1,"offset":"5-0"}},"5-0"]', "5-0") == f'{HEAD}{{"a":1,"offset":"5-0"}}]'


def test_since_gives_what_came_after_the_offset_to_the_rooms_asked_for():
    history = MemoryHistory(max_events=100, max_age=60, clock=Clock())
    start = history.last()
    sent = [history.append("/ws", room, HEAD, str(i))[0] for i, room in enumerate(["a", "b", ["a", "c"], "c"])]
    missed = history.since("/ws", start, ["a"])
    assert missed is not None and [m.position for m in missed] == [sent[0], sent[2]]
    after_first = history.since("/ws", format_offset(sent[0]), ["a", "c"])
    assert after_first is not None and [m.position for m in after_first] == [sent[2], sent[3]]
    assert history.since("/other", start, ["a"]) == []
    assert history.since("/ws", "99999999999999-0", ["a"]) is None  # from the future: not ours


def test_a_gap_the_history_no_longer_covers_is_said_so():
    clock = Clock()
    history = MemoryHistory(max_events=3, max_age=60, clock=clock)
    start = history.last()
    positions = [history.append("/ws", "a", HEAD, "{}")[0] for _ in range(5)]
    assert not history.covers(start) and history.since("/ws", start, ["a"]) is None
    assert not history.covers(format_offset(positions[0]))
    assert history.covers(format_offset(positions[1]))  # the next three are all there
    clock.now += 61  # and by age
    assert not history.covers(format_offset(positions[3]))


def test_a_session_is_kept_for_the_window_after_a_lost_connection_only():
    clock = Clock()
    sessions = MemorySessions(window=10, clock=clock)
    sessions.open(Session("p1", "s1", "/ws", "0-0"))
    sessions.open(Session("p2", "s2", "/ws", "0-0"))
    sessions.closed("p1", "s1", ["agent:x"], recoverable=True)
    sessions.closed("p2", "s2", ["agent:y"], recoverable=False)  # closed on purpose: gone
    assert sessions.get("p2") is None
    clock.now += 9
    taken = sessions.take("p1", "s3")
    assert taken is not None and taken.rooms == ["agent:x"] and taken.sid == "s3"
    sessions.closed("p1", "s1", [], recoverable=True)  # the old connection, late: ignored
    assert sessions.get("p1") is not None and sessions.get("p1").gone_at is None
    sessions.closed("p1", "s3", ["agent:x"], recoverable=True)
    clock.now += 11
    assert sessions.take("p1", "s4") is None and len(sessions) in (0, 1)
    sessions.open(Session("p5", "s5", "/ws", "0-0"))
    sessions.closed("p5", "s5", [], recoverable=True)  # expiring p1 on the way
    assert len(sessions) == 1


def test_python_engineio_clients_are_told_apart_and_auth_decides_first():
    assert speaks_recovery("EIO=4&transport=websocket", {"token": "x"})
    assert speaks_recovery("EIO=4&transport=polling&t=PqR7x_a", None)  # socket.io-client
    assert not speaks_recovery("EIO=4&transport=polling&t=1764870000.123456", {"token": "x"})  # python-engineio
    assert speaks_recovery("EIO=4&transport=polling&t=1764870000.123456", {"recovery": True})
    assert not speaks_recovery("EIO=4&transport=websocket", {"recovery": False})
    assert speaks_recovery("EIO=4", {"recovery": "no"})  # not a boolean: ignored
