#!/usr/bin/env python3
"""The benchmark: the service (python-socketio on uvicorn) against the reference Node socket.io 4.8
server, doing the same work, with the same load generator, in one run.

    .venv/bin/python bench/run.py                  # everything (about 6-8 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick          # tiny counts, for the smoke test (< 60 s)
    .venv/bin/python bench/run.py --only fanout,rate --servers python

Servers are pinned to core 0 (``taskset -c 0``), the load generator (``bench/loadgen.mjs``,
socket.io-client in several Node processes) to core 1. Results: ``bench/results/results.json``,
``results.md`` and ``chart.png`` (``--out`` elsewhere). See ``bench/README.md`` for what each
scenario does and what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SECRET = "bench-secret-" + "0123456789abcdef" * 2
SCENARIOS = ("idle", "rooms", "fanout", "rate", "single", "http", "redis")
SERVERS = ("python", "node")
#: The agent id index of the fan-out room (bench/common.mjs: agentId).
FANOUT_AGENT = 999_999
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: "Keeps up" at a rate: every event delivered, the schedule kept, and latency p99 under this.
KEEP_UP_P99_MS = 50.0
#: "Sustains" a rate: every event delivered, the schedule kept (emit lag p99 under KEEP_UP_P99_MS),
#: and latency p99 under this: the server is not falling further and further behind.
SUSTAIN_P99_MS = 500.0


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Profile:
    idle_levels: tuple[int, ...] = (1000, 5000, 10000)
    rooms_clients: int = 10000
    rooms_seconds: float = 3.0
    fanout_sizes: tuple[int, ...] = (5000, 1000)
    fanout_events: int = 5
    fanout_interval: float = 1.0
    rate_clients: int = 1000
    rates: tuple[float, ...] = (5, 10, 20, 30, 50, 75, 100, 150, 200)
    rate_seconds: float = 3.0
    single_events: int = 20000
    http_clients: int = 100
    http_puts: int = 100
    http_rate: float = 20.0
    redis_clients: int = 1000
    redis_events: int = 5
    redis_interval: float = 1.0
    repeat: int = 3
    ramp_rate: int = 1000
    max_pending: int = 200
    ramp_budget_s: float = 60.0
    subscribe_budget_s: float = 45.0
    settle_s: float = 2.0
    quiet_s: float = 2.0
    loadgen_workers: int = 3


QUICK = Profile(
    idle_levels=(10, 20),
    rooms_clients=20,
    rooms_seconds=1.0,
    fanout_sizes=(20,),
    fanout_events=5,
    fanout_interval=0.1,
    rate_clients=20,
    rates=(20,),
    rate_seconds=1.0,
    single_events=50,
    http_clients=5,
    http_puts=5,
    http_rate=20.0,
    redis_clients=20,
    redis_events=5,
    redis_interval=0.1,
    repeat=1,
    settle_s=0.3,
    quiet_s=1.0,
    loadgen_workers=2,
)

_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


# --- processes: CPU and memory from /proc ------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, all their threads: the scheduler's run time
    in nanoseconds (``/proc/<pid>/task/<tid>/schedstat``). Where that is missing, user + system
    time from ``/proc/<pid>/stat``, which counts 10 ms ticks: too coarse for a phase of a few
    thousand deliveries (2 us per delivery per tick in the Redis scenario)."""
    total_ns = 0
    ticks = 0
    for pid in tree_pids(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
            total_ns += sum(int((task / "schedstat").read_text().split()[0]) for task in tasks)
        except (OSError, ValueError, IndexError):
            fields = _stat_fields(pid)
            if fields:
                ticks += int(fields[11]) + int(fields[12])
    return total_ns / 1e9 + ticks / CLK_TCK


def rss_mb(root: int) -> float:
    total_kb = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (127.0.0.1 only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{method} {url}: HTTP {exc.code} {exc.read()[:300]!r}") from None


def make_token(sub: str, ttl: int = 3600) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + ttl, "iat": now}, SECRET, algorithm="HS256")


@dataclass
class Options:
    pin: bool
    out: Path
    py_args: list[str]
    redis_url: str | None
    deadline: float  # monotonic time after which scenarios are skipped


class Server:
    """One server under test, pinned to core 0."""

    def __init__(self, kind: str, opts: Options, *, redis: tuple[str, str] | None = None, name: str = "") -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"{self.url}/ws"
        self.name = name or kind
        pin = ["taskset", "-c", "0"] if opts.pin else []
        parent = ["--parent-pid", str(os.getpid())]
        if kind == "python":
            args = [*pin, sys.executable, str(BENCH / "py_server.py"), "--port", str(self.port), "--secret", SECRET]
            args += [*parent, *opts.py_args]
            if redis:
                args += ["--redis-url", redis[0], "--redis-channel", redis[1], "--redis-key-prefix", redis[1] + ":"]
        else:
            args = [*pin, "node", "--expose-gc", str(BENCH / "node_server.mjs"), "--port", str(self.port)]
            args += ["--secret", SECRET, *parent]
            if redis:
                args += ["--redis", redis[0], "--redis-key", redis[1]]
        log_dir = opts.out / "tmp"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self._log = self.log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
        try:
            self.info = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} server exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError, BenchError, ValueError):
                return dict(http_json("GET", f"{self.url}/bench/ping", timeout=2))
            time.sleep(0.1)
        raise BenchError(f"{self.name} server not ready in {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-2000:]
        return ""

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def post(self, path: str, body: Any, timeout: float = 30) -> Any:
        return http_json("POST", self.url + path, body, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class LoadGen:
    """bench/loadgen.mjs, pinned to core 1: JSON commands on stdin, JSON replies on stdout."""

    def __init__(self, opts: Options, workers: int) -> None:
        pin = ["taskset", "-c", "1"] if opts.pin else []
        args = [*pin, "node", str(BENCH / "loadgen.mjs"), "--workers", str(workers), "--max-seconds", "900"]
        log_dir = opts.out / "tmp"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"loadgen-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(  # noqa: S603
            args, cwd=BENCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._id = 0
        self.next_index = 0
        ready = self._next_line(20)
        if not ready.get("ready"):
            raise BenchError(f"loadgen did not start: {ready}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next_line(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"loadgen gave no answer in {timeout:.0f} s") from None
        if line is None:
            raise BenchError(f"loadgen exited: {self.log_path.read_text()[-2000:]}")
        return dict(json.loads(line))

    def cmd(self, name: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        self._id += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self._id, "cmd": name, **fields}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_line(max(0.1, deadline - time.monotonic()))
            if reply.get("id") == self._id:
                if not reply.get("ok"):
                    raise BenchError(f"loadgen {name}: {reply.get('error')}")
                return reply

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def connect(self, urls: list[str], count: int, rooms: list[str], prof: Profile, **extra: Any) -> dict[str, Any]:
        timeout = prof.ramp_budget_s
        reply = self.cmd(
            "connect",
            timeout=timeout + 10,
            urls=urls,
            count=count,
            rooms=rooms,
            secret=SECRET,
            rate=prof.ramp_rate,
            max_pending=prof.max_pending,
            timeout_s=timeout,
            **extra,
        )
        self.next_index = reply["next_index"]
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, BenchError, ValueError):
                self.cmd("quit", timeout=5)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# --- one measured phase ----------------------------------------------------------------------------------


def measure(
    servers: list[Server],
    lg: LoadGen,
    trigger: Callable[[], dict[str, Any]],
    expected: int,
    *,
    quiet_s: float,
    deadline_s: float,
) -> dict[str, Any]:
    """Arm the load generator, sample CPU, run ``trigger`` (an emit schedule or paced PUTs), wait
    (bounded) for the deliveries, sample CPU again, collect the figures."""
    lg.cmd("arm")
    cpu0 = sum(s.cpu() for s in servers)
    lg_cpu0 = lg.cpu()
    t0 = time.monotonic()
    schedule = trigger()
    waited = lg.cmd("wait", timeout=deadline_s + 30, expected=expected, quiet_s=quiet_s, deadline_s=deadline_s)
    wall = time.monotonic() - t0
    cpu = sum(s.cpu() for s in servers) - cpu0
    lg_cpu = lg.cpu() - lg_cpu0
    got = lg.cmd("collect", timeout=60)
    received = got["received"]
    latency = got["latency_ms"]
    emitted_all = schedule.get("emitted", schedule.get("sent")) == schedule.get("planned", schedule.get("sent"))
    figures: dict[str, Any] = {
        "expected": expected,
        "received": received,
        "missing": expected - received,
        "delivered_all": received == expected,
        "wait": waited["reason"],
        "server_cpu_s": round(cpu, 3),
        "cpu_us_per_delivery": round(cpu / received * 1e6, 2) if received else None,
        "deliveries_per_s": round(got["deliveries_per_s"]) if got["deliveries_per_s"] else None,
        "burst_deliveries_per_s": round(got["burst_deliveries_per_s"]) if got["burst_deliveries_per_s"] else None,
        "latency_ms": latency,
        "completion_ms": got["completion_ms"],
        "events_seen": got["events_seen"],
        "loadgen_cpu_s": round(lg_cpu, 3),
        "loadgen_busy": round(lg_cpu / wall, 3) if wall else None,
        "loadgen_us_per_delivery": round(lg_cpu / received * 1e6, 2) if received else None,
        "wall_s": round(wall, 3),
        "schedule": schedule,
        "unexpected": got["unexpected"],
        "disconnects": got["disconnects"],
    }
    p99 = latency.get("p99")
    complete = figures["delivered_all"] and emitted_all and not schedule.get("aborted") and p99 is not None
    lag = dig(schedule, ("lag_ms", "p99"))
    figures["kept_up"] = bool(complete and p99 < KEEP_UP_P99_MS)
    figures["sustained"] = bool(complete and p99 < SUSTAIN_P99_MS and (lag is None or lag < KEEP_UP_P99_MS))
    figures["fell_behind"] = not figures["sustained"]
    # The load generator's core was (nearly) saturated, over the phase or within a fan-out burst:
    # then deliveries/s and latency are bounds set by the client side, not the server's figures.
    burst_load = (figures["burst_deliveries_per_s"] or 0) * (figures["loadgen_us_per_delivery"] or 0) / 1e6
    figures["loadgen_bound"] = bool(lg_cpu >= 0.2 and ((figures["loadgen_busy"] or 0) > 0.85 or burst_load > 0.85))
    return figures


def drain(lg: LoadGen, previous: dict[str, Any] | None) -> None:
    """After a phase that did not complete, wait until stragglers stop arriving (bounded)."""
    if previous is not None and previous.get("wait") != "complete":
        lg.cmd("arm")
        lg.cmd("wait", timeout=60, expected=10**12, quiet_s=1.0, deadline_s=30)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each numeric figure over the runs (booleans: all runs), plus the runs."""
    if len(runs) == 1:
        return {**runs[0], "runs": 1}

    def combine(values: list[Any]) -> Any:
        if all(isinstance(v, bool) for v in values):
            return all(values)
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            median = statistics.median(numbers)
            return (
                int(median) if all(isinstance(v, int) for v in numbers) and median == int(median) else round(median, 3)
            )
        if all(isinstance(v, dict) for v in values):
            keys = {k for v in values for k in v}
            return {k: combine([v.get(k) for v in values]) for k in keys}
        return values[-1]

    merged = combine(runs)
    # Verdicts by majority, as the figures are medians (two runs: both).
    merged["kept_up"] = sum(r["kept_up"] for r in runs) * 2 > len(runs)
    merged["sustained"] = sum(r["sustained"] for r in runs) * 2 > len(runs)
    merged["fell_behind"] = not merged["sustained"]
    merged["loadgen_bound"] = any(r["loadgen_bound"] for r in runs)
    merged["runs"] = len(runs)
    merged["per_run"] = [
        {k: r[k] for k in ("received", "cpu_us_per_delivery", "deliveries_per_s", "wall_s")}
        | {"p99": r["latency_ms"].get("p99")}
        for r in runs
    ]
    # Totals are sums, not medians.
    merged["expected"] = sum(r["expected"] for r in runs)
    merged["received"] = sum(r["received"] for r in runs)
    merged["missing"] = merged["expected"] - merged["received"]
    return merged


# --- scenarios ---------------------------------------------------------------------------------------------


@dataclass
class Session:
    kind: str
    prof: Profile
    opts: Options
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, case: str, figures: dict[str, Any]) -> None:
        self.results[case] = figures
        lat = figures.get("latency_ms", {})
        if "cpu_us_per_delivery" in figures:
            progress(
                f"  {self.kind:6} {case:22} delivered {figures['received']}/{figures['expected']}"
                f"  cpu {figures['cpu_us_per_delivery']} us/delivery  {figures['deliveries_per_s']} deliveries/s"
                f"  p50 {lat.get('p50')} p99 {lat.get('p99')} max {lat.get('max')} ms"
                f"  {verdict(figures).strip('*')}"
                f"{'  (load generator saturated)' if figures.get('loadgen_bound') else ''}"
            )
        else:
            progress(f"  {self.kind:6} {case:22} {json.dumps({k: v for k, v in figures.items() if k != 'levels'})}")

    def repeat(
        self, servers: list[Server], lg: LoadGen, make: Callable[[], dict[str, Any]], times: int
    ) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        for _ in range(times):
            drain(lg, runs[-1] if runs else None)
            runs.append(make())
        drain(lg, runs[-1])
        return median_of(runs)


def emit_trigger(server: Server, spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: dict(server.post("/bench/emit", spec, timeout=spec["max_seconds"] + 30))


def warm_up(lg: LoadGen, trigger: Callable[[], dict[str, Any]], expected: int) -> None:
    """An unmeasured round first: the first event to a new connection pays one-time costs (buffers,
    per-connection state, code paths run once) on either side, which are not the steady state."""
    lg.cmd("arm")
    trigger()
    lg.cmd("wait", timeout=60, expected=expected, quiet_s=1.0, deadline_s=20)


def emit_warm_up(lg: LoadGen, server: Server, clients: int, *, agent_base: int, rooms: int = 1) -> None:
    """One event to each of ``rooms`` rooms (``clients`` clients in all), 1 s at most, unmeasured."""
    spec = {"count": rooms, "rate": max(rooms, 20), "agent_base": agent_base, "rooms": rooms, "max_seconds": 10}
    warm_up(lg, emit_trigger(server, spec), clients)


def ensure_clients(lg: LoadGen, server: Server, n: int, prof: Profile, rooms: list[str]) -> dict[str, Any]:
    """Clients 0..n-1 connected (the new ones subscribing to ``rooms``), within
    ``prof.ramp_budget_s``. Answers the load generator's reply, whose ``clients`` is how many are
    connected: fewer than ``n`` when the server could not take them in time (the caller measures
    with those, and says so)."""
    reply = lg.connect([server.ws_url], max(0, n - lg.next_index), rooms, prof)
    capacity = ("deadline", "connect_error: timeout", "subscribe: no ack in 20 s")
    failed = {k: v for k, v in reply["errors"].items() if k not in capacity}
    if failed:
        raise BenchError(f"{sum(failed.values())} of {n} connections failed: {failed}")
    if reply["clients"] < n:
        progress(
            f"  {server.name}: only {reply['clients']} of {n} connected in {reply['seconds']:.0f} s {reply['errors']}"
        )
    return reply


@contextlib.contextmanager
def fresh_server(sess: Session, lg: LoadGen) -> Iterator[Server]:
    """A new server for one part of the session; afterwards it is stopped and the load generator
    drops its clients. (Tearing thousands of connections down one by one costs some servers far
    more than the measurement itself, and is not what is measured.)"""
    server = Server(sess.kind, sess.opts)
    sess.results.setdefault("_info", server.info)
    try:
        yield server
    finally:
        server.stop()
        if lg.next_index:
            lg.cmd("disconnect", timeout=60, **{"from": 0, "to": lg.next_index})
            lg.next_index = 0


def part_idle_rooms(sess: Session, lg: LoadGen, server: Server, scenarios: set[str]) -> None:
    prof = sess.prof
    # Idle: connected clients (each in its own user room and "global", as on connect), no events.
    server.post("/bench/gc", {})
    time.sleep(prof.settle_s)
    base_rss = server.rss()
    levels = prof.idle_levels if "idle" in scenarios else (prof.rooms_clients,)
    live = 0
    for level in levels:
        reply = ensure_clients(lg, server, level, prof, [])
        live = reply["clients"]
        time.sleep(prof.settle_s)
        server.post("/bench/gc", {})
        time.sleep(prof.settle_s / 2)
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(prof.settle_s)
        idle_cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
        rss = server.rss()
        if "idle" in scenarios:
            sess.record(
                f"idle-{level}",
                {
                    "connections": live,
                    "target": level,
                    "baseline_rss_mb": round(base_rss, 1),
                    "rss_mb": round(rss, 1),
                    "kb_per_connection": round((rss - base_rss) * 1024 / live, 2) if live else None,
                    "connect_per_s": round(reply["per_second"]),
                    "connect_s": round(reply["seconds"], 2),
                    "idle_cpu_pct": round(idle_cpu * 100, 1),
                    "ws_extensions": reply.get("extensions"),
                },
            )
    if "rooms" not in scenarios:
        return
    n = prof.rooms_clients
    if live < n:
        live = ensure_clients(lg, server, n, prof, [])["clients"]
    # Each client joins its own agent room, in index order, within the budget: exactly clients
    # [0, k) are subscribed, and the schedule sends one event a second to each of their rooms.
    sub = lg.cmd(
        "subscribe",
        timeout=prof.subscribe_budget_s + 60,
        room="agent:{agent}",
        batch=200,
        deadline_s=prof.subscribe_budget_s,
        **{"from": 0, "to": live},
    )
    k = sub["ok"]
    if sub["failed"] or k < sub["upto"]:
        raise BenchError(f"rooms: {sub['failed']} subscriptions failed")
    if k < n:
        progress(f"  {server.name}: only {k} of {n} clients subscribed to their room in {sub['seconds']:.0f} s")
    emit_warm_up(lg, server, k, agent_base=0, rooms=k)
    count = int(k * prof.rooms_seconds)
    spec = {"count": count, "rate": k, "agent_base": 0, "rooms": k, "max_seconds": prof.rooms_seconds * 2 + 3}
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure(
            [server],
            lg,
            emit_trigger(server, spec),
            count,
            quiet_s=prof.quiet_s,
            deadline_s=prof.rooms_seconds * 3 + 10,
        ),
        prof.repeat,
    )
    figures.update(connections=live, rooms=k, subscribe_per_s=round(sub["per_second"]))
    sess.record(f"rooms-{n}", figures)


def fanout_room_ready(lg: LoadGen, server: Server, n: int, prof: Profile) -> int:
    """Clients 0..n-1 connected, in the fan-out room, settled and warmed up; answers how many are
    connected."""
    live: int = ensure_clients(lg, server, n, prof, [f"agent:{agent_id(FANOUT_AGENT)}"])["clients"]
    time.sleep(prof.settle_s)
    emit_warm_up(lg, server, live, agent_base=FANOUT_AGENT)
    return live


def measure_paced_fanout(
    servers: list[Server], lg: LoadGen, sender: Server, recipients: int, count: int, interval: float, prof: Profile
) -> dict[str, Any]:
    """``count`` events ``interval`` seconds apart from ``sender`` to the fan-out room, measured
    until all ``recipients`` have each of them."""
    spec = {
        "count": count,
        "rate": 1 / interval,
        "agent_base": FANOUT_AGENT,
        "rooms": 1,
        "max_seconds": count * interval * 2 + 5,
    }
    return measure(
        servers,
        lg,
        emit_trigger(sender, spec),
        recipients * count,
        quiet_s=prof.quiet_s,
        deadline_s=count * interval * 3 + 15,
    )


def part_fanout(sess: Session, lg: LoadGen, server: Server, size: int) -> int:
    """Fan-out to one room of ``size`` clients; answers how many clients are connected."""
    prof = sess.prof
    live = fanout_room_ready(lg, server, size, prof)
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure_paced_fanout([server], lg, server, live, prof.fanout_events, prof.fanout_interval, prof),
        prof.repeat,
    )
    figures["clients"] = live
    sess.record(f"fanout-{size}", figures)
    return live


def measure_rate(lg: LoadGen, server: Server, live: int, rate: float, prof: Profile) -> dict[str, Any]:
    """``rate`` events a second for ``rate_seconds`` to the fan-out room of ``live`` clients."""
    count = int(rate * prof.rate_seconds)
    spec = {
        "count": count,
        "rate": rate,
        "agent_base": FANOUT_AGENT,
        "rooms": 1,
        "max_seconds": prof.rate_seconds * 2 + 3,
    }
    figures = measure(
        [server],
        lg,
        emit_trigger(server, spec),
        count * live,
        quiet_s=prof.quiet_s,
        deadline_s=prof.rate_seconds * 3 + 10,
    )
    figures.update(rate=rate, clients=live)
    return figures


def part_rate(sess: Session, lg: LoadGen, server: Server) -> None:
    """A steady rate to one room of ``rate_clients``, rate after rate, until the server no longer
    sustains it (see SUSTAIN_P99_MS); the highest rate it keeps up with is the p99 < 50 ms one."""
    prof = sess.prof
    n = prof.rate_clients
    live = fanout_room_ready(lg, server, n, prof)
    kept: list[float] = []
    sustained: list[float] = []
    previous: dict[str, Any] | None = None
    for rate in prof.rates:
        drain(lg, previous)
        previous = measure_rate(lg, server, live, rate, prof)
        if not previous["sustained"]:
            # One more run before giving up on this rate: a single pause must not end the sweep.
            drain(lg, previous)
            again = measure_rate(lg, server, live, rate, prof)
            first_p99 = dig(previous, ("latency_ms", "p99"))
            best = (
                again
                if again["sustained"] or (dig(again, ("latency_ms", "p99")) or 1e9) < (first_p99 or 1e9)
                else previous
            )
            best["tries"] = [
                {"p99": dig(r, ("latency_ms", "p99")), "sustained": r["sustained"], "received": r["received"]}
                for r in (previous, again)
            ]
            previous = best
        sess.record(f"rate-{n}x{rate:g}", previous)
        if previous["kept_up"]:
            kept.append(rate)
        if not previous["sustained"]:
            break
        sustained.append(rate)
    drain(lg, previous)
    sess.results[f"rate-{n}-max"] = {
        "max_rate_kept_up": max(kept, default=0),
        "max_rate_sustained": max(sustained, default=0),
        "max_deliveries_per_s_sustained": max(sustained, default=0) * live,
        "first_rate_not_sustained": None if len(sustained) == len(prof.rates) else prof.rates[len(sustained)],
        "loadgen_bound_at_limit": bool(previous and previous.get("loadgen_bound")),
        "clients": live,
    }


def part_single(sess: Session, lg: LoadGen, server: Server) -> None:
    prof = sess.prof
    ensure_clients(lg, server, 1, prof, [f"agent:{agent_id(FANOUT_AGENT)}"])
    emit_warm_up(lg, server, 1, agent_base=FANOUT_AGENT)
    count = prof.single_events
    spec = {"count": count, "rate": 0, "agent_base": FANOUT_AGENT, "rooms": 1, "max_seconds": 30}
    sess.record(
        "single-connection",
        sess.repeat(
            [server],
            lg,
            lambda: measure([server], lg, emit_trigger(server, spec), count, quiet_s=prof.quiet_s, deadline_s=40),
            prof.repeat,
        ),
    )


def part_http(sess: Session, lg: LoadGen, server: Server) -> None:
    """PUT /api/v1/projects/{id} (paced) to receipt of project.updated by every client of the project."""
    prof = sess.prof
    owner = str(uuid.uuid4())
    token = make_token(owner)
    project = http_json("POST", f"{server.url}/api/v1/projects", {"name": "bench"}, token=token)
    reply = lg.connect([server.ws_url], prof.http_clients, [f"project:{project['id']}"], prof, user=owner)
    if reply["clients"] < prof.http_clients:
        raise BenchError(f"http: only {reply['clients']} of {prof.http_clients} clients connected: {reply['errors']}")

    def put(count: int = prof.http_puts) -> dict[str, Any]:
        return lg.cmd(
            "put",
            timeout=count / prof.http_rate + 60,
            url=server.url,
            token=token,
            project_id=project["id"],
            count=count,
            rate=prof.http_rate,
        )

    warm_up(lg, lambda: put(2), 2 * prof.http_clients)
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure(
            [server],
            lg,
            put,
            prof.http_clients * prof.http_puts,
            quiet_s=prof.quiet_s,
            deadline_s=prof.http_puts / prof.http_rate * 3 + 10,
        ),
        prof.repeat,
    )
    figures["clients"] = prof.http_clients
    sess.record(f"http-put-{prof.http_clients}", figures)


def main_session(sess: Session, scenarios: set[str]) -> None:
    """Every scenario but Redis against one kind of server: each part on a fresh server."""
    prof = sess.prof
    lg = LoadGen(sess.opts, prof.loadgen_workers)
    try:
        if scenarios & {"idle", "rooms"}:
            with fresh_server(sess, lg) as server:
                part_idle_rooms(sess, lg, server, scenarios)
        sizes = sorted(prof.fanout_sizes if "fanout" in scenarios else (), reverse=True)
        for size in sizes:
            with fresh_server(sess, lg) as server:
                part_fanout(sess, lg, server, size)
                if "rate" in scenarios and size == prof.rate_clients:
                    part_rate(sess, lg, server)  # the same clients
        if "rate" in scenarios and prof.rate_clients not in sizes:
            with fresh_server(sess, lg) as server:
                part_rate(sess, lg, server)
        if "single" in scenarios:
            with fresh_server(sess, lg) as server:
                part_single(sess, lg, server)
        if "http" in scenarios:
            with fresh_server(sess, lg) as server:
                part_http(sess, lg, server)
    finally:
        lg.stop()


def redis_pid(url: str) -> int | None:
    """The process id of the Redis at ``url`` (INFO server), when it runs on this machine."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    with (
        contextlib.suppress(OSError, ValueError),
        socket.create_connection((parts.hostname, parts.port or 6379), 2) as s,
    ):
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        data = b""
        while b"process_id:" not in data or not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
    return None


def wait_ready_endpoint(server: Server, timeout: float = 10) -> None:
    """The service's ``GET /ready`` (200 once its Redis subscription is live), bounded."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server.url}/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return  # a service without /ready
            last = f"HTTP {exc.code} {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{server.name}: /ready not 200 in {timeout:g} s (is Redis at its URL reachable?): {last}")


def redis_session(sess: Session) -> None:
    prof, opts = sess.prof, sess.opts
    if not opts.redis_url:
        raise BenchError("no Redis URL")
    key = f"bench-{uuid.uuid4().hex[:12]}"
    a = Server(sess.kind, opts, redis=(opts.redis_url, key), name=f"{sess.kind}-redis-a")
    try:
        b = Server(sess.kind, opts, redis=(opts.redis_url, key), name=f"{sess.kind}-redis-b")
    except BaseException:
        a.stop()
        raise
    sess.results["_info_redis"] = a.info
    lg: LoadGen | None = None
    try:
        if sess.kind == "python":
            for server in (a, b):
                wait_ready_endpoint(server)
        lg = LoadGen(opts, prof.loadgen_workers)
        rpid = redis_pid(opts.redis_url)
        n = prof.redis_clients
        reply = lg.connect([a.ws_url, b.ws_url], n, [f"agent:{agent_id(FANOUT_AGENT)}"], prof)
        if reply["failed"]:
            raise BenchError(f"redis: {reply['failed']} connections failed: {reply['errors']}")
        time.sleep(prof.settle_s)
        emit_warm_up(lg, a, n, agent_base=FANOUT_AGENT)

        def run() -> dict[str, Any]:
            r0 = cpu_seconds(rpid) if rpid else None
            assert lg is not None
            figures = measure_paced_fanout([a, b], lg, a, n, prof.redis_events, prof.redis_interval, prof)
            if r0 is not None and rpid:
                figures["redis_cpu_s"] = round(cpu_seconds(rpid) - r0, 3)
            return figures

        sess.record(f"redis-fanout-{n}", sess.repeat([a, b], lg, run, prof.repeat))
    finally:
        if lg is not None:
            lg.stop()
        a.stop()
        b.stop()


def agent_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


# --- results ------------------------------------------------------------------------------------------------


def dig(figures: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def ratio(py: Any, node: Any) -> float | None:
    if isinstance(py, int | float) and isinstance(node, int | float) and node:
        return round(py / node, 2)
    return None


def combine(per_server: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    names: list[str] = []
    for kind in SERVERS:
        for name in per_server.get(kind, {}):
            if not name.startswith("_") and name not in names:
                names.append(name)
    for name in names:
        py = per_server.get("python", {}).get(name)
        node = per_server.get("node", {}).get(name)
        entry: dict[str, Any] = {"scenario": name.split("-")[0], "python": py, "node": node}
        ratios = {}
        for key in (
            "cpu_us_per_delivery",
            "deliveries_per_s",
            "burst_deliveries_per_s",
            "kb_per_connection",
            "max_rate_kept_up",
            "max_rate_sustained",
            "connect_per_s",
            "idle_cpu_pct",
        ):
            r = ratio(dig(py, (key,)), dig(node, (key,)))
            if r is not None:
                ratios[key] = r
        for key in ("p50", "p99", "max"):
            r = ratio(dig(py, ("latency_ms", key)), dig(node, ("latency_ms", key)))
            if r is not None:
                ratios[f"latency_{key}"] = r
        entry["ratio_python_to_node"] = ratios
        cases[name] = entry
    return cases


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1
            else f"{value:.{max(1, digits - len(str(int(abs(value)))))}f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def delivered(figures: dict[str, Any] | None) -> str:
    if not figures or "received" not in figures:
        return "-"
    return f"{figures['received']:,}/{figures['expected']:,}"


def verdict(figures: dict[str, Any] | None) -> str:
    if not figures or "kept_up" not in figures:
        return "-"
    return "kept up" if figures["kept_up"] else "sustained" if figures["sustained"] else "**fell behind**"


DAGGER = "\N{DAGGER}"


def cell(figures: dict[str, Any] | None, path: tuple[str, ...], *, mark: bool = False) -> str:
    text = fmt(dig(figures, path))
    if mark and figures and figures.get("loadgen_bound") and text != "-":
        text += " " + DAGGER
    return text


def ratio_cell(py: dict[str, Any] | None, node: dict[str, Any] | None, path: tuple[str, ...]) -> str:
    r = ratio(dig(py, path), dig(node, path))
    return "-" if r is None else f"{r:g}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cases = results["cases"]
    versions = meta["versions"]
    pys = meta["python_server"]
    prof = meta["profile"]
    lines = [
        "# Benchmark: the service (python-socketio) against the reference Node socket.io server",
        "",
        f"Run {meta['date']} (service at commit {meta.get('service_revision')}"
        + (
            f"; **it changed during the run**, to {meta.get('service_revision_at_end')}"
            if meta.get("service_revision_at_end") != meta.get("service_revision")
            else ""
        )
        + f") with `{meta['command']}` "
        f"in {meta['duration_s']:.0f} s on "
        f"{meta['machine']['cpu_model']}, {meta['machine']['cores']} cores: "
        + (
            "each server on core 0, the load generator on core 1 (taskset). "
            if meta["pinned"]
            else "**not pinned** (no taskset or one core). "
        )
        + f"Python {versions.get('python')}, python-socketio {versions.get('python-socketio')}, "
        f"python-engineio {versions.get('python-engineio')}, uvicorn {versions.get('uvicorn')} with "
        f"{pys.get('serving_options')} (ws={pys.get('ws')}, loop={pys.get('loop')}, "
        f"per-message-deflate={pys.get('per_message_deflate')}, ws_ping_interval={pys.get('ws_ping_interval')}); "
        f"Node {versions.get('node')}, socket.io {versions.get('socket.io')} (its defaults: no per-message-deflate), "
        f"@socket.io/redis-adapter {versions.get('@socket.io/redis-adapter')}; load generator: socket.io-client "
        f"{versions.get('socket.io-client')} in {prof['loadgen_workers']} Node processes, WebSocket transport. "
        f"Every event is the service's envelope, {meta.get('envelope_bytes')} bytes of JSON. "
        f"Figures are medians of {prof['repeat']} runs (the rate sweep: one run per rate). "
        "**x = python / node** (above 1: python uses more, or takes longer, or delivers more per second).",
        "",
    ]
    if meta.get("ws_extensions"):
        negotiated = ", ".join(f"{k}: {v}" for k, v in meta["ws_extensions"].items())
        lines += [f"WebSocket extensions negotiated with socket.io-client: {negotiated}.", ""]
    if results.get("errors"):
        lines += ["**Errors:**", "", *[f"- {e}" for e in results["errors"]], ""]
    lines += [
        f"{DAGGER}: the load generator's core was saturated (over the phase, or within a fan-out burst): the "
        "figure is bounded by the client side (socket.io-client parsing, and inflating when per-message-deflate "
        "is negotiated), so the server may be faster than shown. CPU per delivery is the server's own and is not "
        "affected.",
        "",
    ]

    delivery = [k for k, v in cases.items() if v["scenario"] not in ("idle", "rate")]
    if delivery:
        lines += [
            "## Summary",
            "",
            "| case | CPU/delivery python (us) | node | x | deliveries/s python | node | x "
            "| p99 python (ms) | node | x | delivered python | node |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in delivery:
            py, node = cases[name]["python"], cases[name]["node"]
            rate_key = (
                ("burst_deliveries_per_s",) if cases[name]["scenario"] in ("fanout", "redis") else ("deliveries_per_s",)
            )
            lines.append(
                f"| {name} | {cell(py, ('cpu_us_per_delivery',))} | {cell(node, ('cpu_us_per_delivery',))} "
                f"| {ratio_cell(py, node, ('cpu_us_per_delivery',))} | {cell(py, rate_key, mark=True)} "
                f"| {cell(node, rate_key, mark=True)} | {ratio_cell(py, node, rate_key)} "
                f"| {cell(py, ('latency_ms', 'p99'), mark=True)} | {cell(node, ('latency_ms', 'p99'), mark=True)} "
                f"| {ratio_cell(py, node, ('latency_ms', 'p99'))} | {delivered(py)} | {delivered(node)} |"
            )
        for name, entry in cases.items():
            if name.endswith("-max"):
                py, node = entry["python"] or {}, entry["node"] or {}
                lines.append(
                    f"| {name}: highest rate sustained (events/s to {fmt(py.get('clients') or node.get('clients'))}"
                    f" clients) | | | | {fmt(py.get('max_rate_sustained'))} | {fmt(node.get('max_rate_sustained'))} "
                    f"| {ratio_cell(py, node, ('max_rate_sustained',))} | | | | | |"
                )
        idle = [k for k, v in cases.items() if v["scenario"] == "idle"]
        if idle:
            last = cases[idle[-1]]
            lines.append(
                f"| {idle[-1]}: memory per connection (KB) | | | | {cell(last['python'], ('kb_per_connection',))} "
                f"| {cell(last['node'], ('kb_per_connection',))} "
                f"| {ratio_cell(last['python'], last['node'], ('kb_per_connection',))} | | | | | |"
            )
        lines += [
            "",
            "Deliveries/s: for fan-out cases, within one fan-out (clients of the room / time for the event to "
            "reach the last of them); otherwise over the whole phase (which, for paced scenarios, is the pace "
            "when the server keeps up).",
            "",
        ]

    idle = {k: v for k, v in cases.items() if v["scenario"] == "idle"}
    if idle:
        lines += [
            "## Idle connections (memory per connection)",
            "",
            "Connected clients (each in its own user room and `global`, as on connect), no events; RSS after a "
            "garbage collection, minus the RSS before any connection, divided by the connections.",
            "",
            "| connections | python KB/conn | node KB/conn | x | python RSS MB | node RSS MB "
            "| python connects/s | node connects/s | python idle CPU % | node idle CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in idle.values():
            py, node = entry["python"] or {}, entry["node"] or {}
            conns = f"{fmt(py.get('connections'))} / {fmt(node.get('connections'))}"
            lines.append(
                f"| {conns} | {fmt(py.get('kb_per_connection'))} | {fmt(node.get('kb_per_connection'))} "
                f"| {ratio_cell(py, node, ('kb_per_connection',))} | {fmt(py.get('rss_mb'))} "
                f"| {fmt(node.get('rss_mb'))} | {fmt(py.get('connect_per_s'))} | {fmt(node.get('connect_per_s'))} "
                f"| {fmt(py.get('idle_cpu_pct'))} | {fmt(node.get('idle_cpu_pct'))} |"
            )
        lines.append("")

    sections = {
        "rooms": (
            "Connections each in its own room, one event a second each",
            "Every client joins `agent:<its own id>` (in order, within the time budget), then the server sends "
            "each of those rooms one event a second.",
        ),
        "fanout": (
            "Fan-out: one event to every client of one room",
            f"{prof['fanout_events']} events, {prof['fanout_interval']:g} s apart, to one room; "
            "completion = time for an event to reach the last client of the room.",
        ),
        "single": (
            "One connection, as fast as it goes",
            "Back-to-back events to one client (the emit loop yields to the event loop between events).",
        ),
        "http": (
            "HTTP PUT to client receipt",
            f"Paced `PUT /api/v1/projects/{{id}}` ({prof['http_rate']:g}/s) renaming the project; latency from "
            "the scheduled send time of the request to the receipt of `project.updated` by each client of the "
            "project room. The Node server's PUT is a stand-in (an in-memory object, the same envelope).",
        ),
        "redis": (
            "Fan-out across two instances through Redis",
            "Two instances of each server (both on core 0) sharing the machine's Redis; half the clients on each; "
            "the events are sent from the first. CPU is the sum of both instances; Redis's own CPU is shown apart.",
        ),
    }
    for scenario, (title, text) in sections.items():
        group = {k: v for k, v in cases.items() if v["scenario"] == scenario}
        if not group:
            continue
        lines += [f"## {title}", "", text, "", "| case | figure | python | node | x |", "|---|---|---|---|---|"]
        for name, entry in group.items():
            py, node = entry["python"], entry["node"]
            rows: list[tuple[str, tuple[str, ...], bool, bool]] = [
                ("server CPU per delivery (us)", ("cpu_us_per_delivery",), False, True),
                ("deliveries per second", ("deliveries_per_s",), True, True),
            ]
            if scenario in ("fanout", "redis"):
                rows += [
                    ("deliveries/s within one fan-out", ("burst_deliveries_per_s",), True, True),
                    ("completion p50 (ms)", ("completion_ms", "p50"), True, True),
                    ("completion max (ms)", ("completion_ms", "max"), True, True),
                ]
            rows += [
                ("latency p50 (ms)", ("latency_ms", "p50"), True, True),
                ("latency p99 (ms)", ("latency_ms", "p99"), True, True),
                ("latency max (ms)", ("latency_ms", "max"), True, True),
                ("emit lag p99 (ms)", ("schedule", "lag_ms", "p99"), False, False),
                ("PUT response p50 (ms)", ("schedule", "http_ms", "p50"), False, True),
                ("Redis CPU (s)", ("redis_cpu_s",), False, False),
                ("rooms", ("rooms",), False, False),
                ("connections", ("connections",), False, False),
                ("clients", ("clients",), False, False),
                ("load generator busy (share of its core)", ("loadgen_busy",), False, False),
            ]
            out = [("delivered", delivered(py), delivered(node), "")]
            if scenario == "rooms":
                out.append(("verdict", verdict(py), verdict(node), ""))
            for label, path, mark, with_ratio in rows:
                if dig(py, path) is None and dig(node, path) is None:
                    continue
                out.append(
                    (
                        label,
                        cell(py, path, mark=mark),
                        cell(node, path, mark=mark),
                        ratio_cell(py, node, path) if with_ratio else "",
                    )
                )
            for i, (label, a, b, r) in enumerate(out):
                lines.append(f"| {name if i == 0 else ''} | {label} | {a} | {b} | {r} |")
        lines.append("")

    rates = {k: v for k, v in cases.items() if v["scenario"] == "rate" and not k.endswith("-max")}
    if rates:
        clients = prof["rate_clients"]
        lines += [
            f"## Steady rate to one room of {clients:,} clients",
            "",
            f"Each rate for {prof['rate_seconds']:g} s; the sweep goes on while a server sustains the rate. "
            f"**Kept up**: every event delivered, the schedule kept, p99 < {KEEP_UP_P99_MS:g} ms. **Sustained**: "
            f"the same with p99 < {SUSTAIN_P99_MS:g} ms and the emit loop less than {KEEP_UP_P99_MS:g} ms behind "
            "its schedule (p99). CPU in us per delivery; latency in ms.",
            "",
            "| events/s | deliveries/s | python delivered | CPU | p50 | p99 | max | verdict "
            "| node delivered | CPU | p50 | p99 | max | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in rates.values():
            py, node = entry["python"], entry["node"]
            rate = dig(py, ("rate",)) or dig(node, ("rate",))
            cols = [fmt(rate), fmt((rate or 0) * clients)]
            for fig in (py, node):
                cols += [
                    delivered(fig),
                    cell(fig, ("cpu_us_per_delivery",)),
                    cell(fig, ("latency_ms", "p50"), mark=True),
                    cell(fig, ("latency_ms", "p99"), mark=True),
                    cell(fig, ("latency_ms", "max"), mark=True),
                    verdict(fig),
                ]
            lines.append("| " + " | ".join(cols) + " |")
        for name, entry in cases.items():
            if entry["scenario"] == "rate" and name.endswith("-max"):
                py, node = entry["python"] or {}, entry["node"] or {}
                lines += [
                    "",
                    f"Highest rate kept up: python {fmt(py.get('max_rate_kept_up'))}, node "
                    f"{fmt(node.get('max_rate_kept_up'))} events/s. Highest rate sustained: python "
                    f"{fmt(py.get('max_rate_sustained'))}, node {fmt(node.get('max_rate_sustained'))} events/s "
                    f"(x {clients:,} clients = deliveries/s)"
                    + (
                        f"; the load generator was saturated at node's limit {DAGGER}"
                        if node.get("loadgen_bound_at_limit")
                        else ""
                    )
                    + (
                        f"; the load generator was saturated at python's limit {DAGGER}"
                        if py.get("loadgen_bound_at_limit")
                        else ""
                    )
                    + ".",
                ]
        lines.append("")
    return "\n".join(lines)


README_BEGIN = "<!-- results:begin (bench/run.py writes between these lines) -->"
README_END = "<!-- results:end -->"


def readme_excerpt(table: str) -> str:
    """The run's preamble, summary, idle and rate tables from results.md, headings one level down."""
    preamble, *sections = table.split("\n## ")
    keep = [s for s in sections if s.startswith(("Summary", "Idle connections", "Steady rate"))]
    body = "\n".join(preamble.splitlines()[1:]).strip()  # without the H1 title
    parts = [body, *("### " + section.strip() for section in keep)]
    parts.append(
        "Every scenario's figures: [results/results.md](results/results.md); raw: [results/results.json]"
        "(results/results.json); chart: [results/chart.png](results/chart.png)."
    )
    return "\n\n".join(parts)


def update_readme(table: str) -> bool:
    readme = BENCH / "README.md"
    try:
        text = readme.read_text()
    except OSError:
        return False
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n\n{readme_excerpt(table)}\n\n{README_END}{tail}")
    return True


def chart(results: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements.txt): no chart"
    cases = results["cases"]
    delivery = [k for k, v in cases.items() if v["scenario"] not in ("idle", "rate")]
    idle = [k for k, v in cases.items() if v["scenario"] == "idle"]
    sweep = [k for k, v in cases.items() if v["scenario"] == "rate" and k.endswith("-max")]

    def throughput(figures: dict[str, Any] | None, name: str) -> Any:
        if name.endswith("-max"):
            return dig(figures, ("max_deliveries_per_s_sustained",))
        if cases[name]["scenario"] in ("fanout", "redis"):
            return dig(figures, ("burst_deliveries_per_s",))
        return dig(figures, ("deliveries_per_s",))

    panels: list[tuple[str, list[str], Callable[[dict[str, Any] | None, str], Any], bool]] = [
        ("Server CPU per delivery (us, log)", delivery, lambda f, n: dig(f, ("cpu_us_per_delivery",)), True),
        (
            "Latency p99 from the scheduled send time (ms, log)",
            delivery,
            lambda f, n: dig(f, ("latency_ms", "p99")),
            True,
        ),
        (
            "Deliveries per second (log; fan-out: within one fan-out; rate-max: highest sustained)",
            delivery + sweep,
            throughput,
            True,
        ),
        ("Memory per idle connection (KB)", idle, lambda f, n: dig(f, ("kb_per_connection",)), False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    colors = {"python": "#3572A5", "node": "#83CD29"}
    for ax, (title, names, value, log) in zip(axes.flat, panels, strict=True):
        ax.set_title(title, fontsize=10)
        width = 0.4
        for offset, kind in ((-width / 2, "python"), (width / 2, "node")):
            values = [value(cases[n].get(kind), n) or 0 for n in names]
            ax.bar([i + offset for i in range(len(names))], values, width, label=kind, color=colors[kind])
        for i, name in enumerate(names):
            r = ratio(value(cases[name].get("python"), name), value(cases[name].get("node"), name))
            if r is not None:
                top = max(value(cases[name].get(k), name) or 0 for k in SERVERS)
                ax.annotate(f"x{r:g}", (i, top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        if log:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(
        f"python-socketio service vs Node socket.io {meta['versions'].get('socket.io')} "
        f"({meta['date'][:10]}; xN = python / node)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def environment() -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
    }


def node_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["node"] = subprocess.run(
            ["node", "--version"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    for name in ("socket.io", "socket.io-client", "@socket.io/redis-adapter", "redis"):
        with contextlib.suppress(OSError, ValueError):
            versions[name] = json.loads((BENCH / "node_modules" / name / "package.json").read_text())["version"]
    return versions


def service_revision() -> str | None:
    """The repository's commit, and whether apps/ has uncommitted changes (what was measured)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "apps"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" with uncommitted changes in apps/" if dirty else "")


def check_prerequisites() -> None:
    missing = [
        n
        for n in ("socket.io", "socket.io-client", "@socket.io/redis-adapter", "redis")
        if not (BENCH / "node_modules" / n).is_dir()
    ]
    if missing:
        raise SystemExit(
            f"bench/node_modules is missing {', '.join(missing)}: run `npm ci --prefix bench` "
            f"(bench/package.json and bench/package-lock.json pin them)"
        )
    if shutil.which("node") is None:
        raise SystemExit("node is not on PATH: install Node.js 20+")


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (the smoke test)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios, comma-separated: {','.join(SCENARIOS)}"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="python,node")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results directory (default bench/results)")
    parser.add_argument("--repeat", type=int, help="runs per measurement (median); default 3, 1 with --quick")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=9.5, help="skip what is left after this long")
    parser.add_argument("--py-ws", help="uvicorn's ws for the Python server (default: the service's choice)")
    parser.add_argument("--py-loop", help="uvicorn's loop for the Python server (default: the service's choice)")
    parser.add_argument("--py-ws-per-message-deflate", choices=["true", "false"], help="default: the service's choice")
    args = parser.parse_args(argv)

    check_prerequisites()
    scenarios = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    kinds = [k for k in SERVERS if k in {s.strip() for s in args.servers.split(",")}]
    prof = QUICK if args.quick else Profile()
    if args.repeat:
        prof = replace(prof, repeat=args.repeat)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if not pin and not args.no_pin:
        progress("warning: taskset missing or one core only: servers and load generator are not pinned")
    args.out.mkdir(parents=True, exist_ok=True)
    opts = Options(
        pin=pin,
        out=args.out,
        py_args=[
            *(["--ws", args.py_ws] if args.py_ws else []),
            *(["--loop", args.py_loop] if args.py_loop else []),
            *(["--ws-per-message-deflate", args.py_ws_per_message_deflate] if args.py_ws_per_message_deflate else []),
        ],
        redis_url=args.redis_url,
        deadline=time.monotonic() + args.max_minutes * 60,
    )
    command = "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    revision_at_start = service_revision()
    progress(f"benchmark: scenarios {','.join(s for s in SCENARIOS if s in scenarios)}; servers {','.join(kinds)}")
    per_server: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    with timed() as elapsed:
        sessions = {kind: Session(kind, prof, opts) for kind in kinds}
        plan: list[tuple[str, Callable[[Session], None]]] = []
        main_scenarios = scenarios - {"redis"}
        if main_scenarios:
            plan += [(kind, lambda s: main_session(s, main_scenarios)) for kind in kinds]
        if "redis" in scenarios:
            plan += [(kind, redis_session) for kind in kinds]
        for kind, run in plan:
            sess = sessions[kind]
            if time.monotonic() > opts.deadline:
                errors.append(
                    f"{kind}: skipped {run.__name__ if hasattr(run, '__name__') else 'a session'}: past --max-minutes"
                )
                continue
            progress(f"{kind}: {'redis' if run is redis_session else 'main'} session")
            try:
                run(sess)
            except (BenchError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                progress(f"ERROR {kind}: {exc}")
        for kind, sess in sessions.items():
            per_server[kind] = sess.results
        duration = elapsed()

    info_py = per_server.get("python", {}).get("_info", {}) or per_server.get("python", {}).get("_info_redis", {})
    envelope = set()
    extensions = {}
    for kind, res in per_server.items():
        for figures in res.values():
            if isinstance(figures, dict):
                size = dig(figures, ("schedule", "envelope_bytes"))
                if size:
                    envelope.add(size)
                if figures.get("ws_extensions") is not None:
                    extensions[kind] = figures["ws_extensions"] or "none"
    results = {
        "meta": {
            "date": started,
            "command": command,
            "service_revision": revision_at_start,
            "service_revision_at_end": service_revision(),
            "duration_s": round(duration, 1),
            "quick": args.quick,
            "pinned": pin,
            "scenarios": sorted(scenarios),
            "servers": kinds,
            "machine": environment(),
            "versions": {
                **{
                    k: info_py.get(k)
                    for k in (
                        "python",
                        "python-socketio",
                        "python-engineio",
                        "uvicorn",
                        "fastapi",
                        "websockets",
                        "uvloop",
                    )
                },
                **node_versions(),
            },
            "python_server": {
                k: info_py.get(k) for k in ("ws", "loop", "per_message_deflate", "ws_ping_interval", "serving_options")
            },
            "envelope_bytes": sorted(envelope)[0] if len(envelope) == 1 else sorted(envelope),
            "ws_extensions": extensions,
            "profile": prof.__dict__,
            "keep_up_p99_ms": KEEP_UP_P99_MS,
            "sustain_p99_ms": SUSTAIN_P99_MS,
        },
        "cases": combine(per_server),
        "errors": errors,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (args.out / "results.md").write_text(table + "\n")
    full = scenarios == set(SCENARIOS) and kinds == list(SERVERS) and not args.quick
    if full and args.out.resolve() == (BENCH / "results").resolve() and not errors and update_readme(table):
        progress("bench/README.md: latest results updated")
    if not args.no_chart and not args.quick:
        problem = chart(results, args.out / "chart.png")
        if problem:
            progress(problem)
    progress(
        f"done in {duration:.0f} s: {args.out / 'results.json'}, results.md" + ("" if args.quick else ", chart.png")
    )
    if errors:
        for error in errors:
            progress(f"ERROR {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
