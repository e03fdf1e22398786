"""The passes one process runs at once, over all its sources: bounded, first come first served.

Each pass takes a place for its whole length (its list walk, the open runs read again); a pass
that finds none waits in line, it never fails for lack of one. A backfill's windows beyond its
first take places only from the spare half, and only when nobody waits: a long first copy walks
fewer windows side by side, and the incremental passes of the other sources keep their turn.

No I/O here: sync.py and backfill.py take places; the daemon reports the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

MAX_PASSES = 32  # the default: enough for the sources' passes to overlap, far from any limit


class Passes:
    def __init__(self, limit: int = MAX_PASSES, *, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self.extra = 0  # places held by backfill windows beyond their pass's first
        self.waits = 0  # passes that had to wait for a place
        self._free = limit
        self._line: deque[tuple[asyncio.Future[None], float]] = deque()

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return sum(not future.done() for future, _ in self._line)

    def oldest_wait(self) -> float:
        """Seconds the first pass in line has waited (0: none waits)."""
        starts = [since for future, since in self._line if not future.done()]
        return self.clock() - min(starts) if starts else 0.0

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """A place for one pass, held until the block ends; waits in line for one."""
        await self._take()
        try:
            yield
        finally:
            self._give_back()

    def try_extra(self) -> bool:
        """A place for one more window of a backfill, if one is spare: nobody waits, and the
        windows' extra places stay within half the budget. give_back_extra() returns it."""
        if self._free > 0 and not self.queued and self.extra < self.limit // 2:
            self._free -= 1
            self.extra += 1
            return True
        return False

    def give_back_extra(self) -> None:
        self.extra -= 1
        self._give_back()

    def figures(self) -> dict[str, Any]:
        return {
            "passes_limit": self.limit,
            "passes_in_flight": self.in_flight,
            "passes_queued": self.queued,
            "pass_waits": self.waits,
            "pass_oldest_wait_seconds": round(self.oldest_wait(), 3),
        }

    async def _take(self) -> None:
        if self._free > 0 and not self.queued:
            self._free -= 1
            return
        self.waits += 1
        entry = (asyncio.get_running_loop().create_future(), self.clock())
        self._line.append(entry)
        try:
            await entry[0]
        except asyncio.CancelledError:
            if entry[0].done() and not entry[0].cancelled():
                self._give_back()  # handed a place just as it was cancelled: pass it on
            raise
        finally:
            if entry in self._line:
                self._line.remove(entry)

    def _give_back(self) -> None:
        """Hands the place to the first in line, or frees it."""
        while self._line:
            future, _ = self._line.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
