"""The benchmark keeps working: ``bench/run.py --quick`` runs every scenario with tiny counts against
both servers (the service and the reference Node socket.io server, the Redis scenario through the
test Redis), and its results have the expected structure with every event delivered.

No timing is asserted: figures from a few dozen events on a shared CI machine mean nothing. The
benchmark itself (``python bench/run.py``, see ``bench/README.md``) is run by hand.

Needs ``npm ci --prefix bench`` (bench/package.json pins socket.io, socket.io-client and the Redis
adapter); without ``bench/node_modules`` this test fails, it is not skipped.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from apps.api.tests.support import REPO_ROOT
from bench.harness import QUICK

BENCH = REPO_ROOT / "bench"
NODE_PACKAGES = ("socket.io", "socket.io-client", "@socket.io/redis-adapter", "redis")
TIMEOUT = 90.0

#: The cases ``--quick`` produces (its counts are in bench/harness.py: QUICK).
DELIVERY_CASES = (
    "rooms-20",
    "fanout-20",
    "burst-20x20",
    "rate-20x20",
    "single-connection",
    "http-put-5",
    "redis-fanout-20",
)
IDLE_CASES = ("idle-10", "idle-20")
STORM_CASE = "storm-20"


def _prerequisites() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: install Node.js 20+ to run the benchmark")
    missing = [name for name in NODE_PACKAGES if not (BENCH / "node_modules" / name).is_dir()]
    if missing:
        pytest.fail(
            f"bench/node_modules is missing {', '.join(missing)}: run `npm ci --prefix bench` "
            f"in {REPO_ROOT} (bench/package.json and bench/package-lock.json pin them)"
        )


async def _run_quick(out: Path, redis_url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / "run.py"),
        "--quick",
        "--out",
        str(out),
        "--redis-url",
        redis_url,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(f"bench/run.py --quick did not finish in {TIMEOUT:.0f} s:\n{output.decode(errors='replace')}")
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_quick_benchmark_delivers_every_event_on_both_servers(tmp_path: Path, redis_url: str) -> None:
    _prerequisites()
    code, output = await _run_quick(tmp_path, redis_url)
    assert code == 0, f"bench/run.py --quick failed ({code}):\n{output}"

    results: dict[str, Any] = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == [], output
    meta = results["meta"]
    for key in ("date", "command", "duration_s", "machine", "versions", "profile", "envelope_bytes"):
        assert key in meta, key
    assert meta["servers"] == ["python", "node"]
    assert meta["envelope_bytes"] == 317, "both servers must send the same 317-byte envelope"
    for package in ("python-socketio", "socket.io", "socket.io-client", "@socket.io/redis-adapter"):
        assert meta["versions"].get(package), package

    cases = results["cases"]
    assert set(DELIVERY_CASES) | set(IDLE_CASES) | {"rate-20-max", STORM_CASE} <= set(cases), sorted(cases)
    for name in DELIVERY_CASES:
        for kind in ("python", "node"):
            figures = cases[name][kind]
            where = f"{name} on {kind}"
            assert figures["expected"] > 0, where
            assert figures["received"] == figures["expected"], f"{where}: missing deliveries: {figures}"
            assert figures["missing"] == 0, where
            assert figures["latency_ms"]["n"] == figures["received"], where
            assert figures["latency_ms"]["negative"] == 0, f"{where}: an event arrived before it was scheduled"
            for key in ("server_cpu_s", "cpu_us_per_delivery", "deliveries_per_s", "loadgen_busy"):
                assert isinstance(figures[key], int | float), f"{where}: {key}"
            for key in ("p50", "p99", "max"):
                assert isinstance(figures["latency_ms"][key], int | float), f"{where}: latency {key}"
        assert isinstance(cases[name]["ratio_python_to_node"], dict), name
    for name in IDLE_CASES:
        for kind in ("python", "node"):
            figures = cases[name][kind]
            assert figures["connections"] == figures["target"], f"{name} on {kind}: {figures}"
            for key in ("kb_per_connection", "connect_cpu_us", "idle_cpu_us_per_conn_s"):
                assert isinstance(figures[key], int | float), f"{name} on {kind}: {key}"
            level = QUICK.idle_levels.index(figures["target"])
            new = figures["connections"] - (QUICK.idle_levels[level - 1] if level else 0)
            assert figures["connect_ms"]["n"] == new, f"{name} on {kind}: {figures}"
    for kind in ("python", "node"):
        storm = cases[STORM_CASE][kind]
        assert storm["connected"] == storm["clients"] == 20, f"{STORM_CASE} on {kind}: {storm}"
        assert storm["timeouts"] == 0 and storm["errors"] == {}, f"{STORM_CASE} on {kind}: {storm}"
        assert storm["connect_ms"]["n"] == 20, storm
        assert 0 < storm["seconds"] <= storm["settled_s"], storm
        assert isinstance(storm["connect_cpu_us"], int | float), storm
    assert cases["rooms-20"]["python"]["rooms"] == cases["rooms-20"]["node"]["rooms"] == 20
    assert "redis_cpu_s" in cases["redis-fanout-20"]["python"]

    table = (tmp_path / "results.md").read_text()
    for heading in (
        "Idle connections",
        "Connect storm",
        "Bursts",
        "Fan-out",
        "Steady rate",
        "One connection",
        "HTTP PUT",
        "through Redis",
    ):
        assert heading in table, heading


async def test_the_transport_emit_path_sends_the_broadcasters_envelope():
    """``--py-emit-path transport`` measures the broadcaster by difference: what it sends must be
    what the broadcaster sends through the service's emitter for the same call (but the id and
    the timestamp), to the same room, as one ``emit_json``."""
    from types import SimpleNamespace
    from uuid import uuid4

    from apps.api.events.broadcaster import Broadcaster
    from apps.api.websocket.server import SocketIOEmitter
    from bench.py_server import marker, transport_send

    sent: list[tuple[str, str, str, list[str], str]] = []

    class Manager:  # the transport's manager, recording
        async def emit_json(self, event: str, text: str, namespace: str, rooms: list[str], key: str = "") -> None:
            sent.append((event, text, namespace, rooms, key))

    emitter = SocketIOEmitter(SimpleNamespace(manager=Manager()))  # type: ignore[arg-type]
    agents = [uuid4(), uuid4()]
    send = transport_send(agents, emit_json=Manager().emit_json)
    task = marker(7, 1234.5)
    await send(agent_id=agents[1], agent_name="bench", status="busy", availability=5, current_task=task)
    event = await Broadcaster(emitter).broadcast_agent_status_changed(
        agent_id=agents[1], agent_name="bench", status="busy", availability=5, current_task=task
    )
    (name, text, namespace, rooms, key), (b_name, b_text, b_namespace, b_rooms, b_key) = sent
    assert (name, namespace, rooms) == (b_name, b_namespace, b_rooms)
    assert (name, namespace, rooms) == ("agent.status_changed", "/ws", [f"agent:{agents[1]}"])
    ours, theirs = json.loads(text), json.loads(b_text)
    assert {**ours, "id": None, "timestamp": None} == {**theirs, "id": None, "timestamp": None}
    assert len(text) == len(b_text)
    assert ours["data"]["current_task"] == task
    assert b_key == event.id and key and key != b_key  # a key per event, as the broadcaster's
