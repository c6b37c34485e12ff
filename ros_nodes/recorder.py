"""``mtm record``: :func:`record_main`, a :class:`~mtm_runtime.ros_nodes.loop_monitor.LoopMonitor`
on its own (rclpy; thin).

Records the given topics (default: ``mtm_runtime.recording.CLOSED_LOOP_TOPICS``) until Ctrl-C,
SIGTERM or a duration, drains what is still queued, and writes the recorder's per-topic
received/missed counts into the file (metadata ``mtm_record``); every topic that lost messages is
named on stderr and sets exit status 1. The command's argument parsing is
``mtm_runtime.commands.record``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import rclpy

from mtm_runtime.recording import CLOSED_LOOP_TOPICS, McapSink
from mtm_runtime.recording_loss import loss_summary, loss_warnings
from mtm_runtime.ros_nodes.executors import StopSignals, close, init_context, make_executor, spin_loop
from mtm_runtime.ros_nodes.loop_monitor import BRIDGE_TOPICS, MONITOR_EXECUTOR, LoopMonitor

#: ``mtm record``: the longest wait for the bridge's other topics before subscribing to /observation.
RECORD_LAST_WAIT_S = 2.0


class _DrainStopped(Exception):
    """A second SIGINT/SIGTERM while ``mtm record`` drains its queues."""


def record_main(output: Path, topics: list[str] | None, duration_s: float) -> int:
    """Record ``topics`` (default: the closed-loop set) until Ctrl-C/SIGTERM or ``duration_s``.

    At the end it keeps taking what is queued until every topic has delivered a message sent
    after the end or gone quiet (``LoopMonitor.drain``). Prints one summary line (messages per
    topic, how many were missed); every topic that lost messages gets a warning line on stderr.
    Exit status 0, or 1 when messages were missed (the
    file is complete either way and holds the counts in its ``mtm_record`` metadata)."""
    context = init_context(None)
    wanted = CLOSED_LOOP_TOPICS if not topics else {t if t.startswith("/") else "/" + t:
                                                   CLOSED_LOOP_TOPICS.get(t if t.startswith("/") else "/" + t, "")
                                                   for t in topics}
    try:
        sink = McapSink(output, metadata={"recorded_by": "mtm record"})
    except OSError as e:
        rclpy.shutdown(context=context)
        print(f"mtm record: cannot write {output}: {e.strerror or e}", file=sys.stderr)
        return 2
    # /observation last, once the bridge's other topics and the commands are subscribed (see LoopMonitor
    # ``last``): with the bridge's start_subscribers the loop then starts only when every stream reaches
    # the recorder (a recorder that had not yet seen the commands' publisher lost a run's first 2 s of them)
    gate: dict[str, Any] = {"last": "/observation",
                            "first": tuple(t for t in (*BRIDGE_TOPICS, "/commands") if t in wanted),
                            "last_wait_s": RECORD_LAST_WAIT_S} if "/observation" in wanted else {}
    node = LoopMonitor(dict(wanted), sink, context=context, **gate)
    executor, _ = make_executor(context, prefer=MONITOR_EXECUTOR)
    executor.add_node(node)
    t_end = time.monotonic() + duration_s if duration_s > 0 else math.inf
    print(f"mtm record: recording {', '.join(wanted)} to {output}"
          + (f" for {duration_s:g} s" if duration_s > 0 else " until Ctrl-C"), flush=True)
    with StopSignals() as stop:  # rclpy's own handlers are off: the context stays up to drain
        try:
            spin_loop(executor, context, keep_going=lambda: time.monotonic() < t_end and not stop.requested,
                      period_s=0.05)
            stop_ns, signals_at_stop = time.time_ns(), len(stop.received)

            def spin_until_second_signal() -> None:  # a second signal: stop draining, still finish the file
                if len(stop.received) > signals_at_stop:
                    raise _DrainStopped
                executor.spin_once(timeout_sec=0.02)

            node.drain(spin_until_second_signal, stop_ns)
        except _DrainStopped:
            pass
        finally:
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
            report = node.finish_recording()
            close(None, None, context)
    missing = [t for t in wanted if t not in report and t not in node.unrecordable]
    print(f"mtm record: wrote {output}: {loss_summary(report)}"
          + (f"; never published: {', '.join(missing)}" if missing else "")
          + "".join(f"; not recorded: {t} ({why})" for t, why in node.unrecordable.items()), flush=True)
    for line in loss_warnings(report):
        print(f"mtm record: WARNING: {line}", file=sys.stderr, flush=True)
    return 1 if any(r["missed"] for r in report.values()) else 0
