"""The Socket.IO project's own protocol suites (Engine.IO v4: 24 tests; Socket.IO v5: 32) against
this package's servers in each suite's reference configuration (``conformance_server.py``).

The suites and their runner live outside the repository, in ``../shared/conformance/`` (or
``CONFORMANCE_DIR``; see ``CANDIDATES``). Without them these tests are skipped, saying so, unless
``CONFORMANCE_REQUIRED=1`` (CI sets it), which makes their absence a failure.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from apps.transport.tests.support import REPO_ROOT, free_port, listening

#: Where the suites are looked for, in order: ``CONFORMANCE_DIR``, ``../shared/conformance`` beside
#: the repository, and this workplace's shared folder (for a clone made elsewhere).
CANDIDATES = [
    *([Path(os.environ["CONFORMANCE_DIR"])] if os.environ.get("CONFORMANCE_DIR") else []),
    REPO_ROOT.parent / "shared" / "conformance",
    Path("/work/shared/conformance"),
]
CONFORMANCE = next((path for path in CANDIDATES if (path / "run").exists()), CANDIDATES[0])
SUITE_TIMEOUT = 400  # seconds, the first run included (it installs the suites' npm packages)


@pytest.fixture(scope="module")
def runner() -> Path:
    run = CONFORMANCE / "run"
    if not run.exists():
        message = f"the official protocol suites are in none of {[str(p) for p in CANDIDATES]} (set CONFORMANCE_DIR)"
        if os.environ.get("CONFORMANCE_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return run


@pytest.mark.parametrize(("suite", "tests"), [("engineio", 24), ("socketio", 32)])
async def test_the_official_protocol_suite_passes(runner: Path, suite: str, tests: int) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apps.transport.tests.conformance_server", suite, str(port),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await listening(port, server)
        suite_run = await asyncio.create_subprocess_exec(
            str(runner), suite, f"http://127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output = (await asyncio.wait_for(suite_run.communicate(), SUITE_TIMEOUT))[0].decode(errors="replace")
    finally:
        server.terminate()
        server_output = (await asyncio.wait_for(server.communicate(), 10))[0].decode(errors="replace")
    assert suite_run.returncode == 0, f"{output}\n--- server ---\n{server_output}"
    assert f"{tests} passing" in output, output
    assert "Traceback" not in server_output, server_output
