"""The benchmark's results: the cases of both servers side by side with their ratios (python /
node), the meta of ``results.json`` (machine, versions, the commit measured), the tables of
``results.md``, the excerpt between the markers of ``bench/README.md``, and ``chart.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BENCH, KEEP_UP_P99_MS, REPO, SERVERS, SUSTAIN_P99_MS, Profile, dig, verdict

DAGGER = "\N{DAGGER}"


# --- cases and tables -----------------------------------------------------------------------------------------


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
            "connect_cpu_us",
            "idle_cpu_pct",
            "idle_cpu_us_per_conn_s",
            "seconds",
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


def cell(figures: dict[str, Any] | None, path: tuple[str, ...], *, mark: bool = False) -> str:
    text = fmt(dig(figures, path))
    if mark and figures and figures.get("loadgen_bound") and text != "-":
        text += " " + DAGGER
    return text


def ratio_cell(py: dict[str, Any] | None, node: dict[str, Any] | None, path: tuple[str, ...]) -> str:
    r = ratio(dig(py, path), dig(node, path))
    return "-" if r is None else f"{r:g}"


#: The head of a table of one case's figures, a row each (see :func:`case_rows`).
CASE_TABLE = ["| case | figure | python | node | x |", "|---|---|---|---|---|"]


def case_rows(name: str, rows: list[tuple[str, str, str, str]]) -> list[str]:
    """The rows of one case in a :data:`CASE_TABLE`: (figure, python, node, x), the case named once."""
    return [f"| {name if i == 0 else ''} | {label} | {a} | {b} | {r} |" for i, (label, a, b, r) in enumerate(rows)]


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
        f"per-message-deflate={pys.get('per_message_deflate')}, ws_ping_interval={pys.get('ws_ping_interval')}, "
        f"recovery={pys.get('recovery')}"
        + (f", emit path {path}" if (path := pys.get("emit_path")) not in (None, "broadcaster") else "")
        + "); "
        f"Node {versions.get('node')}, socket.io {versions.get('socket.io')} (its defaults: no per-message-deflate), "
        + (
            f"in the Redis scenario {nrs['redis_adapter']}, recovery {nrs['recovery']}; "
            if (nrs := meta.get("node_redis_server") or {}).get("redis_adapter")
            else f"@socket.io/redis-adapter {versions.get('@socket.io/redis-adapter')}; "
        )
        + "load generator: socket.io-client "
        f"{versions.get('socket.io-client')} in {prof['loadgen_workers']} Node processes, WebSocket transport. "
        + (
            f"Every event is the service's envelope, {size} bytes of JSON. "
            if (size := meta.get("envelope_bytes")) not in (None, [])
            else ""
        )
        + f"Figures are medians of {prof['repeat']} runs (the rate sweep: one run per rate). "
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

    delivery = [k for k, v in cases.items() if v["scenario"] not in ("idle", "rate", "storm")]
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
            "| python connects/s | node connects/s | python CPU/connect (us) | node | x "
            "| idle window (s) | python idle CPU (us/conn/s) | node | x |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in idle.values():
            py, node = entry["python"] or {}, entry["node"] or {}
            conns = f"{fmt(py.get('connections'))} / {fmt(node.get('connections'))}"
            lines.append(
                f"| {conns} | {fmt(py.get('kb_per_connection'))} | {fmt(node.get('kb_per_connection'))} "
                f"| {ratio_cell(py, node, ('kb_per_connection',))} | {fmt(py.get('rss_mb'))} "
                f"| {fmt(node.get('rss_mb'))} | {fmt(py.get('connect_per_s'))} | {fmt(node.get('connect_per_s'))} "
                f"| {fmt(py.get('connect_cpu_us'))} | {fmt(node.get('connect_cpu_us'))} "
                f"| {ratio_cell(py, node, ('connect_cpu_us',))} "
                f"| {fmt(py.get('idle_window_s'))} / {fmt(node.get('idle_window_s'))} "
                f"| {fmt(py.get('idle_cpu_us_per_conn_s'))} | {fmt(node.get('idle_cpu_us_per_conn_s'))} "
                f"| {ratio_cell(py, node, ('idle_cpu_us_per_conn_s',))} |"
            )
        lines += [
            "",
            "CPU/connect: the server's CPU while the level's new clients connected (paced by the load generator), "
            "per connection. Idle CPU: over the window, per connection and second. The last level's window is one "
            "heartbeat interval (25 s on both servers), so each connection's PING and PONG is in it once; the "
            "other levels' 2 s windows come seconds after their connects, before any PING is due (the first comes "
            "25 s after a connect): they show the servers' baseline, not the heartbeat.",
            "",
        ]

    storm = {k: v for k, v in cases.items() if v["scenario"] == "storm"}
    if storm:
        lines += [
            "## Connect storm: every client at once to a fresh server",
            "",
            "As after a restart or a deploy: all clients connect together (no pacing), each with "
            "socket.io-client's 20 s connect timeout, to a server that has just started.",
            "",
            *CASE_TABLE,
        ]
        rows = [
            ("connected", ("connected",)),
            ("client timeouts", ("timeouts",)),
            ("seconds until the last is connected", ("seconds",)),
            ("seconds until every client connected or gave up", ("settled_s",)),
            ("time to connect p50 (ms)", ("connect_ms", "p50")),
            ("time to connect p99 (ms)", ("connect_ms", "p99")),
            ("time to connect max (ms)", ("connect_ms", "max")),
            ("server CPU per connect (us)", ("connect_cpu_us",)),
            ("server CPU (s)", ("cpu_s",)),
            ("load generator busy (share of its core)", ("loadgen_busy",)),
        ]
        for name, entry in storm.items():
            py, node = entry["python"], entry["node"]
            lines += case_rows(
                name, [(label, cell(py, path), cell(node, path), ratio_cell(py, node, path)) for label, path in rows]
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
        "burst": (
            "Bursts: events back to back to every client of one room",
            "Events sent as fast as the server goes (the emit loop yields to the event loop between events) to "
            "one room of 1,000 clients (200 events) and of 5,000 (50 events).",
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
        lines += [f"## {title}", "", text, "", *CASE_TABLE]
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
            lines += case_rows(name, out)
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


# --- bench/README.md and the chart ----------------------------------------------------------------------------


README_BEGIN = "<!-- results:begin (bench/run.py writes between these lines) -->"
README_END = "<!-- results:end -->"


def readme_excerpt(table: str) -> str:
    """The run's preamble, summary, idle and rate tables from results.md, headings one level down."""
    preamble, *sections = table.split("\n## ")
    keep = [s for s in sections if s.startswith(("Summary", "Idle connections", "Connect storm", "Steady rate"))]
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
    delivery = [k for k, v in cases.items() if v["scenario"] not in ("idle", "rate", "storm")]
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


# --- the machine, the versions, the commit measured: results.json ---------------------------------------------


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
    for name in (
        "socket.io",
        "socket.io-client",
        "@socket.io/redis-adapter",
        "@socket.io/redis-streams-adapter",
        "redis",
    ):
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


def results_document(
    per_server: dict[str, dict[str, Any]],
    errors: list[str],
    *,
    started: str,
    command: str,
    revision_at_start: str | None,
    duration: float,
    quick: bool,
    pinned: bool,
    scenarios: set[str],
    kinds: list[str],
    prof: Profile,
) -> dict[str, Any]:
    """What results.json holds: the run's meta (the machine, the versions, the commit measured at the
    start and now, the profile, the envelope size and WebSocket extensions the servers reported),
    every case of both servers with its ratios (``combine``), and the errors."""
    info_py = per_server.get("python", {}).get("_info", {}) or per_server.get("python", {}).get("_info_redis", {})
    info_node_redis = per_server.get("node", {}).get("_info_redis", {})
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
    return {
        "meta": {
            "date": started,
            "command": command,
            "service_revision": revision_at_start,
            "service_revision_at_end": service_revision(),
            "duration_s": round(duration, 1),
            "quick": quick,
            "pinned": pinned,
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
                k: info_py.get(k)
                for k in (
                    "ws",
                    "loop",
                    "per_message_deflate",
                    "ws_ping_interval",
                    "serving_options",
                    "recovery",
                    "emit_path",
                )
            },
            "node_redis_server": {k: info_node_redis.get(k) for k in ("redis_adapter", "recovery")},
            "envelope_bytes": sorted(envelope)[0] if len(envelope) == 1 else sorted(envelope),
            "ws_extensions": extensions,
            "profile": prof.__dict__,
            "keep_up_p99_ms": KEEP_UP_P99_MS,
            "sustain_p99_ms": SUSTAIN_P99_MS,
        },
        "cases": combine(per_server),
        "errors": errors,
    }
