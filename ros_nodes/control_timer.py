"""The policy node's control-rate timer, which idles while fresh states keep coming.

In ``trigger: state`` the loop steps on each state, so a timer firing every period has nothing to
do but the stale check while states arrive. ``ControlTimer`` cancels it then (``idle_if_fresh``),
and a coarse watch timer (``WATCH_PERIOD_S``) restarts it before the input could go stale: the
stale bound is unchanged, and 20 wake-ups per second replace one per control period. A state
deferred to the next tick (flood guard) restarts it at once (``wake``). In ``trigger: timer``, or
while the loop streams (async chunks), it never idles.
"""
from __future__ import annotations

import time
from typing import Any, Callable

#: how often the watch timer looks whether the idle control-rate timer must restart
WATCH_PERIOD_S = 0.05


class ControlTimer:
    """The control-rate timer of ``node`` calling ``on_tick``, for ``loop`` (a ``ControlLoop``)."""

    def __init__(self, node: Any, loop: Any, on_tick: Callable[[], None]) -> None:
        self._node, self._loop = node, loop
        # idle only while the input stays fresh for longer than this (one watch period to
        # notice, two control periods of margin)
        self._idle_guard_s = WATCH_PERIOD_S + 2 * loop.period_s
        self._may_idle = loop.config.trigger == "state" and not loop.streams
        self.timer = node.create_timer(loop.period_s, on_tick)
        self._watch = node.create_timer(WATCH_PERIOD_S, self._on_watch) if self._may_idle else None

    def idle_if_fresh(self) -> None:
        """After a tick with nothing to do: cancel the timer unless the input could go stale soon."""
        if self._may_idle and not self._stale_soon():
            self.timer.cancel()

    def wake(self) -> None:
        if self.timer.is_canceled():
            self.timer.reset()  # next tick one period from now

    def destroy(self) -> None:
        for t in (self.timer, self._watch):
            if t is not None:
                self._node.destroy_timer(t)

    def _stale_soon(self) -> bool:
        """The input could go stale before the watch timer's next look."""
        return self._loop.input_age(time.monotonic()) + self._idle_guard_s >= self._loop.watchdog.timeout_s

    def _on_watch(self) -> None:
        if self._stale_soon():
            self.wake()
