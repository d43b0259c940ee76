"""Helpers for this package's own tests (nothing from the service that uses the package)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def listening(port: int, process: Any = None, timeout: float = 15.0) -> None:
    """Wait (bounded) until something accepts connections on 127.0.0.1:``port``; fail early if
    ``process`` exits first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if process is not None and process.returncode is not None:
            raise AssertionError(f"the server exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing listens on port {port} after {timeout} s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
