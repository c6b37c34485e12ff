"""Executor choice and the spin loop shared by the project's nodes.

Control paths use the EventsExecutor when it works and a SingleThreadedExecutor otherwise; never
the MultiThreadedExecutor (measured: it drops nearly all messages at 500 Hz on 2 cores).

The EventsExecutor is *probed*, not assumed: it is absent on Humble, and in the rclpy 9.1.2 wheel
``spin()`` busy-loops without running callbacks while ``spin_once(timeout_sec=...)`` works. So the
probe runs a short timer through ``spin_once`` on a throw-away node, and every node here spins
with a ``spin_once`` loop (``spin_loop``), which is correct for both executors.
"""
from __future__ import annotations

import gc
import os
import time
from typing import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, SingleThreadedExecutor

#: Environment override: ``MTM_EXECUTOR=single`` forces the SingleThreadedExecutor.
ENV_VAR = "MTM_EXECUTOR"


def _events_executor_works(context: Context, timeout_s: float = 1.0) -> bool:
    try:
        from rclpy.experimental import EventsExecutor  # not in Humble
    except ImportError:
        return False
    node = None
    ex = None
    try:
        node = rclpy.create_node("_mtm_executor_probe", context=context, start_parameter_services=False,
                                 use_global_arguments=False)  # no __node:= remap
        fired: list[int] = []
        node.create_timer(0.005, lambda: fired.append(1))
        ex = EventsExecutor(context=context)
        ex.add_node(node)
        deadline = time.monotonic() + timeout_s
        while len(fired) < 2 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        return len(fired) >= 2
    except Exception:  # noqa: BLE001 - any failure means "do not use it"
        return False
    finally:
        if ex is not None:
            ex.shutdown(timeout_sec=0.5)
        if node is not None:
            node.destroy_node()


def make_executor(context: Context, prefer: str = "auto") -> tuple[Executor, str]:
    """(executor, name). ``prefer``: ``auto`` (probe EventsExecutor), ``events`` or ``single``."""
    prefer = os.environ.get(ENV_VAR, prefer)
    if prefer in ("auto", "events") and _events_executor_works(context):
        from rclpy.experimental import EventsExecutor

        return EventsExecutor(context=context), "events"
    return SingleThreadedExecutor(context=context), "single_threaded"


def settle_heap() -> None:
    """Collect once, then freeze every object alive now out of the cyclic garbage collector.

    Call it when a node is set up (start-up, activation), never per tick. With torch, onnxruntime
    and rclpy imported a process holds ~180k tracked objects, and a full (generation 2) collection
    walks them all: 120 ms measured here, a burst of missed control periods whenever the
    allocator happens to trigger one. Frozen objects are skipped, so the loop's own collections
    stay in microseconds. Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def spin_loop(executor: Executor, context: Context, keep_going: Callable[[], bool] = lambda: True,
              period_s: float = 0.1) -> None:
    """Spin with ``spin_once(timeout_sec=period_s)`` until the context shuts down or ``keep_going()`` is False."""
    while context.ok() and keep_going():
        executor.spin_once(timeout_sec=period_s)


def drain(executor: Executor, seconds: float = 0.2, step_s: float = 0.02) -> None:
    """Keep spinning for ``seconds`` so the last messages, transition events and logs go out."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=step_s)


def close(executor: Executor, node: "rclpy.node.Node", context: Context) -> None:
    """Shut down in the right order: executor, node, then the context (if still up)."""
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    if context.ok():
        rclpy.shutdown(context=context)
