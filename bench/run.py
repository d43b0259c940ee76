#!/usr/bin/env python3
"""The benchmark: the service (python-socketio on uvicorn) against the reference Node socket.io 4.8
server, doing the same work, with the same load generator, in one run.

    .venv/bin/python bench/run.py                  # everything (about 8-9 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick          # tiny counts, for the smoke test (< 60 s)
    .venv/bin/python bench/run.py --only fanout,rate --servers python

Servers are pinned to core 0 (``taskset -c 0``), the load generator (``bench/loadgen.mjs``,
socket.io-client in several Node processes) to core 1. Results: ``bench/results/results.json``,
``results.md`` and ``chart.png`` (``--out`` elsewhere). See ``bench/README.md`` for what each
scenario does and what each figure means.

The work is in three modules next to this one: ``bench/harness.py`` (the processes, sampling from
``/proc``, one measured phase, the profiles), ``bench/scenarios.py`` (what each scenario does, part
by part) and ``bench/report.py`` (results.json, results.md, the README excerpt, the chart). This
script parses the options and runs the sessions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.harness import (  # noqa: E402
    BENCH,
    QUICK,
    SERVERS,
    BenchError,
    Options,
    Profile,
    Session,
    check_prerequisites,
    progress,
    timed,
)
from bench.report import chart, markdown, results_document, service_revision, update_readme  # noqa: E402
from bench.scenarios import SCENARIOS, main_session, redis_session  # noqa: E402


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
    parser.add_argument("--max-minutes", type=float, default=12, help="skip what is left after this long")
    parser.add_argument("--py-ws", help="uvicorn's ws for the Python server (default: the service's choice)")
    parser.add_argument("--py-loop", help="uvicorn's loop for the Python server (default: the service's choice)")
    parser.add_argument("--py-ws-per-message-deflate", choices=["true", "false"], help="default: the service's choice")
    parser.add_argument(
        "--py-recovery", choices=["on", "off"], help="connection state recovery of the Python server (default: on)"
    )
    parser.add_argument(
        "--py-emit-path",
        choices=["broadcaster", "transport"],
        help="how the Python server's schedule sends (default broadcaster: the typed broadcast_* call); "
        "transport: the same envelope, serialised once per room, through the transport's emit_json "
        "(what the broadcaster costs, by difference)",
    )
    parser.add_argument(
        "--node-redis-adapter",
        choices=["pubsub", "streams"],
        default="pubsub",
        help="the Node server's Redis adapter; streams: the Redis Streams adapter, with connection state recovery",
    )
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
            *(["--recovery", args.py_recovery] if args.py_recovery else []),
            *(["--emit-path", args.py_emit_path] if args.py_emit_path else []),
        ],
        redis_url=args.redis_url,
        node_redis_adapter=args.node_redis_adapter,
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

    results = results_document(
        per_server,
        errors,
        started=started,
        command=command,
        revision_at_start=revision_at_start,
        duration=duration,
        quick=args.quick,
        pinned=pin,
        scenarios=scenarios,
        kinds=kinds,
        prof=prof,
    )
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
