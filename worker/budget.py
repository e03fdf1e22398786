"""The passes one process runs at once, over all its sources: bounded, first come first served,
and shared between the upstream tokens.

Each pass takes a place for its whole length (its list walk, the open runs read again); a pass
that finds none waits in line, it never fails for lack of one. The passes of one group (one token
of one upstream: their requests share its pace) hold at most half the places, so passes slowed by
one token's limit never hold up the others: a pass whose group is at its share lets the ones
behind it go first. A backfill's windows beyond its first take places only from the spare half,
and only when nobody waits: a long first copy walks fewer windows side by side, and the
incremental passes of the other sources keep their turn.

No I/O here: sync.py and backfill.py take places; the daemon reports the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

MAX_PASSES = 32  # the default: enough for the sources' passes to overlap, far from any limit


@dataclass(eq=False)
class _Waiter:
    group: Hashable
    since: float
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Passes:
    def __init__(self, limit: int = MAX_PASSES, *, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.share = max(1, limit // 2)  # the most places one group holds
        self.clock = clock
        self.extra = 0  # places held by backfill windows beyond their pass's first
        self.waits = 0  # passes that had to wait for a place
        self._free = limit
        self._held: Counter[Hashable] = Counter()  # places per group
        self._line: deque[_Waiter] = deque()

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return len(self._line)

    def oldest_wait(self) -> float:
        """Seconds the first pass in line has waited (0: none waits)."""
        return self.clock() - self._line[0].since if self._line else 0.0

    @asynccontextmanager
    async def place(self, group: Hashable = None) -> AsyncIterator[None]:
        """A place for one pass of `group`, held until the block ends; waits in line for one."""
        await self._take(group)
        try:
            yield
        finally:
            self._give_back(group)

    def try_extra(self, group: Hashable = None) -> bool:
        """A place for one more window of a backfill, if one is spare: nobody waits, the group
        is under its share, and the windows' extra places stay within half the budget.
        give_back_extra() returns it."""
        if self._open(group) and not self._line and self.extra < self.limit // 2:
            self._grant(group)
            self.extra += 1
            return True
        return False

    def give_back_extra(self, group: Hashable = None) -> None:
        self.extra -= 1
        self._give_back(group)

    def figures(self) -> dict[str, Any]:
        return {
            "passes_limit": self.limit,
            "passes_in_flight": self.in_flight,
            "passes_queued": self.queued,
            "pass_waits": self.waits,
            "pass_oldest_wait_seconds": round(self.oldest_wait(), 3),
        }

    def _open(self, group: Hashable) -> bool:
        return self._free > 0 and self._held[group] < self.share

    def _grant(self, group: Hashable) -> None:
        self._free -= 1
        self._held[group] += 1

    async def _take(self, group: Hashable) -> None:
        # Those in line wait for a place, or for their group to go under its share: a pass of
        # another group may go before them.
        if self._open(group) and not any(w.group == group for w in self._line):
            self._grant(group)
            return
        self.waits += 1
        waiter = _Waiter(group, self.clock())
        self._line.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._give_back(group)  # handed a place just as it was cancelled: pass it on
            elif waiter in self._line:
                self._line.remove(waiter)
            raise

    def _give_back(self, group: Hashable) -> None:
        """Frees the place, and hands places to those in line who may take one, in order."""
        self._free += 1
        self._held[group] -= 1
        if not self._held[group]:
            del self._held[group]
        for waiter in list(self._line):
            if not self._free:
                return
            if self._open(waiter.group):
                self._line.remove(waiter)
                self._grant(waiter.group)
                waiter.future.set_result(None)
