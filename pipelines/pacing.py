"""Real-time pacing of audio frames: one frame per period, without bursts after a stall.

Shared by the worker's playout and the harnesses that speak into a room in real time:
each sleeps to its next frame's deadline, and when it is already late (the loop was
busy) it starts counting again from now rather than sending the missed frames at once.
"""

from __future__ import annotations

import asyncio


class FrameClock:
    """Deadlines ``period`` apart on the running loop's clock."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time()

    def restart(self) -> None:
        """The next frame is due one period from now (after an idle wait)."""
        self._deadline = self._loop.time()

    async def wait(self) -> None:
        """Sleep until the next frame is due; if that is past, due from now on."""
        self._deadline += self.period
        delay = self._deadline - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self._deadline = self._loop.time()
