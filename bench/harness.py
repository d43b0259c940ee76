"""The benchmark's harness: the processes it runs, how it samples them, and one measured phase.

- ``Server`` (``py_server.py`` or ``node_server.mjs``, pinned to core 0) and ``LoadGen``
  (``loadgen.mjs``, pinned to core 1; JSON commands on its stdin, JSON replies on its stdout);
- CPU seconds and RSS of a process tree, from ``/proc``; free ports; JSON over HTTP; tokens; the
  Redis process and the service's ``/ready``;
- ``measure`` (one phase: arm, sample, trigger, wait, sample, collect), ``drain``, ``median_of``
  and the verdicts (kept up / sustained);
- ``Session`` (one kind of server's results), ``Profile`` and ``QUICK`` (the counts of a run).

``bench/scenarios.py`` and ``bench/report.py`` build on this module; it imports neither.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SECRET = "bench-secret-" + "0123456789abcdef" * 2
SERVERS = ("python", "node")
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
    #: idle CPU at the last idle level is measured over this long: one heartbeat interval of both
    #: servers (25 s), so that every connection's PING and PONG falls in the window once
    heartbeat_window_s: float = 25.0
    #: the connect storm: this many clients connect at once to a fresh server, within the budget
    storm_clients: int = 10000
    storm_budget_s: float = 60.0
    rooms_clients: int = 10000
    rooms_seconds: float = 3.0
    fanout_sizes: tuple[int, ...] = (5000, 1000)
    fanout_events: int = 5
    fanout_interval: float = 1.0
    #: back-to-back bursts: (clients in the room, events), each on its own server
    bursts: tuple[tuple[int, int], ...] = ((1000, 200), (5000, 50))
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
    heartbeat_window_s=0.5,
    storm_clients=20,
    storm_budget_s=20.0,
    rooms_clients=20,
    rooms_seconds=1.0,
    fanout_sizes=(20,),
    fanout_events=5,
    fanout_interval=0.1,
    bursts=((20, 20),),
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


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start


# --- processes: CPU and memory from /proc ---------------------------------------------------------------------


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


def user_system_seconds(root: int) -> tuple[float, float]:
    """User and system CPU seconds of ``root`` and its descendants (``/proc/<pid>/stat``, in
    10 ms ticks: over a phase of seconds, where the kernel's share of a server's time goes)."""
    user = system = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields:
            user, system = user + int(fields[11]), system + int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


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
    node_redis_adapter: str = "pubsub"  # streams: the Redis Streams adapter, with connection state recovery


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
                args += ["--redis", redis[0], "--redis-key", redis[1], "--redis-adapter", opts.node_redis_adapter]
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

    def user_system(self) -> tuple[float, float]:
        return user_system_seconds(self.proc.pid)

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

    def connect(
        self,
        urls: list[str],
        count: int,
        rooms: list[str],
        prof: Profile,
        *,
        rate: float | None = None,
        max_pending: int | None = None,
        budget_s: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """``count`` more clients, at most ``rate`` new ones a second and ``max_pending`` in flight,
        within ``budget_s`` (the profile's ramp unless given)."""
        timeout = prof.ramp_budget_s if budget_s is None else budget_s
        reply = self.cmd(
            "connect",
            timeout=timeout + 10,
            urls=urls,
            count=count,
            rooms=rooms,
            secret=SECRET,
            rate=prof.ramp_rate if rate is None else rate,
            max_pending=prof.max_pending if max_pending is None else max_pending,
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


def check_prerequisites() -> None:
    missing = [
        n
        for n in (
            "socket.io",
            "socket.io-client",
            "@socket.io/redis-adapter",
            "@socket.io/redis-streams-adapter",
            "redis",
        )
        if not (BENCH / "node_modules" / n).is_dir()
    ]
    if missing:
        raise SystemExit(
            f"bench/node_modules is missing {', '.join(missing)}: run `npm ci --prefix bench` "
            f"(bench/package.json and bench/package-lock.json pin them)"
        )
    if shutil.which("node") is None:
        raise SystemExit("node is not on PATH: install Node.js 20+")


# --- one measured phase ---------------------------------------------------------------------------------------


def dig(figures: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


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
    split0 = [s.user_system() for s in servers]
    lg_cpu0 = lg.cpu()
    t0 = time.monotonic()
    schedule = trigger()
    waited = lg.cmd("wait", timeout=deadline_s + 30, expected=expected, quiet_s=quiet_s, deadline_s=deadline_s)
    wall = time.monotonic() - t0
    cpu = sum(s.cpu() for s in servers) - cpu0
    split = [s.user_system() for s in servers]
    user = sum(after[0] - before[0] for before, after in zip(split0, split, strict=True))
    system = sum(after[1] - before[1] for before, after in zip(split0, split, strict=True))
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
        # the same time split into user space and the kernel (10 ms ticks: a rough split)
        "server_user_s": round(user, 2),
        "server_system_s": round(system, 2),
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


def verdict(figures: dict[str, Any] | None) -> str:
    if not figures or "kept_up" not in figures:
        return "-"
    return "kept up" if figures["kept_up"] else "sustained" if figures["sustained"] else "**fell behind**"


# --- sessions -------------------------------------------------------------------------------------------------


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
