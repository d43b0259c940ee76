"""CPU of the HTTP rate limits' in-memory windows (an instance without Redis) while requests
arrive, with many other callers inside their windows:

    .venv/bin/python bench/micro_rate_limits.py [--keys 1,1000,5000]

For each number of other callers (keys, each hit once, "100/minute"), 200 hits on one more key,
5 ms apart (about 1 s), timed with the process's CPU clock: limits' own ``MemoryStorage`` against
the service's ``QuietMemoryStorage`` (``apps/api/http_limits.py``). Each measurement runs in an
event loop of its own, so a pass one storage left running cannot bill the next.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from apps.api.http_limits import QuietMemoryStorage


async def cpu_ms(storage: MemoryStorage, keys: int) -> float:
    limiter = MovingWindowRateLimiter(storage)
    item = parse("100/minute")
    for k in range(keys):
        await limiter.hit(item, f"caller-{k}")
    await asyncio.sleep(0.2)
    started = time.process_time()
    for _ in range(200):
        await limiter.hit(item, "hot")
        await asyncio.sleep(0.005)
    return (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="1,1000,5000")
    args = parser.parse_args()
    print("ms of CPU for 200 hits over about 1 s")
    for keys in (int(k) for k in args.keys.split(",")):
        theirs = asyncio.run(cpu_ms(MemoryStorage(), keys))
        ours = asyncio.run(cpu_ms(QuietMemoryStorage(), keys))
        print(f"  {keys:6d} other callers: limits' MemoryStorage {theirs:7.1f}, QuietMemoryStorage {ours:7.1f}")


if __name__ == "__main__":
    main()
