"""Executor choice and the spin loop shared by the project's nodes.

Control paths use the EventsExecutor when it works and a SingleThreadedExecutor otherwise; never
the MultiThreadedExecutor (measured: it drops nearly all messages at 500 Hz on 2 cores).

``run_node`` is every node's ``main``: it owns the signals (:class:`StopSignals`: any number of
SIGINT/SIGTERM, exit 0) and the teardown (``close``: no ghost participants).

The EventsExecutor is *probed*, not assumed: it is absent on Humble, and in the rclpy 9.1.2 wheel
``spin()`` busy-loops without running callbacks while ``spin_once(timeout_sec=...)`` works. So the
probe runs a short timer through ``spin_once`` on a throw-away node, and every node here spins
with a ``spin_once`` loop (``spin_loop``), which is correct for both executors.
"""
from __future__ import annotations

import gc
import os
import signal
import time
from typing import Any, Callable

import rclpy
import rclpy.logging
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

#: At teardown: time between destroying the node and its participant (see ``close``).
GRAPH_UPDATE_S = 0.1
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


def close(executor: Executor | None, node: "rclpy.node.Node | None", context: Context) -> None:
    """Shut down in the right order: executor, node, the context (if still up), then its handle.

    ``settle_heap`` froze the node's objects out of the garbage collector, and frozen objects are
    never finalised, not even at interpreter exit: the DDS participant would then vanish only when
    its lease runs out (~20 s of a ghost node in ``ros2 node list``, measured). So the heap is
    unfrozen and collected, and the context destroyed, which disposes of the participant at once.
    """
    if executor is not None:
        executor.shutdown(timeout_sec=1.0)
    if node is not None:
        node.destroy_node()
        # the node's removal goes out on the reliable graph topic; the participant must still exist
        # to repair it, or a peer that missed it and the participant's (best-effort) dispose keeps
        # a ghost node until the lease runs out (seen once in a full suite beside a busy loop)
        time.sleep(GRAPH_UPDATE_S)
    if context.ok():
        rclpy.shutdown(context=context)
    gc.unfreeze()
    gc.collect()
    destroy = getattr(context, "destroy", None)  # Humble's Context has no destroy()
    if destroy is not None:
        destroy()


def init_context(args: list[str] | None) -> Context:
    """A fresh rclpy context with rclpy's own signal handlers off: :class:`StopSignals` owns
    SIGINT/SIGTERM, so a second signal can never interrupt the shutdown it started."""
    context = Context()
    rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    return context


class StopSignals:
    """While entered, SIGINT and SIGTERM only record that a stop was asked, any number of times.

    ``ros2 launch`` forwards a SIGINT to every node and a terminal's Ctrl-C sends one to the whole
    process group, so a node gets two, often while it is already shutting down. The previous
    handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        self._old = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def first_name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""


def run_node(make_node: Callable[[Context], Any], args: list[str] | None, *,
             finished: Callable[[Any], bool] = lambda node: False,
             on_stop: Callable[[Any, Executor, str], None] | None = None, period_s: float = 0.05,
             prefer: str = "auto") -> int:
    """The ``main`` of every node here: init, spin until a signal or ``finished(node)``, close.

    On SIGINT/SIGTERM ``on_stop(node, executor, signal_name)`` runs (the policy node publishes its
    safe action there) before the shutdown; further signals are ignored, so every node exits 0 on
    any number of them. A node whose construction fails with ``ValueError`` (a bad parameter)
    logs one line and exits 2. ``prefer`` as in :func:`make_executor`.
    """
    context = init_context(args)
    node = executor = None
    with StopSignals() as stop:
        try:
            try:
                node = make_node(context)
            except ValueError as e:
                rclpy.logging.get_logger("mtm_runtime").error(f"node not started: {e}")
                return 2
            executor, node.executor_name = make_executor(context, prefer)
            executor.add_node(node)
            node.get_logger().info(f"executor: {node.executor_name}")
            settle_heap()
            spin_loop(executor, context, keep_going=lambda: not stop.requested and not finished(node),
                      period_s=period_s)
            if stop.requested and on_stop is not None:
                on_stop(node, executor, stop.first_name)
            drain(executor, 0.2)  # the last messages, transition events and logs go out
        except (KeyboardInterrupt, ExternalShutdownException):  # a signal handler other than ours
            pass
        finally:
            close(executor, node, context)
    return 0
