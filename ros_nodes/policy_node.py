"""mtm_policy_node: the MTM policy as a ROS 2 lifecycle node, an adapter over ``ControlLoop``.

The loop and its safety chain (input and stamp checks, flood guard, episodes, ``act()``, overrun,
limits, rate limit, fault action, counters, fault log) live in ``mtm_runtime.control_loop``, the
parameter table and its checks in ``mtm_runtime.policy_params``, message conversion in
``mtm_runtime.ros_nodes.conversions``. This node converts messages, owns timers, QoS, parameters,
diagnostics and the lifecycle, and publishes what the loop returns.

* configure: load the model, check it against the parameters, build the ControlLoop, warm up;
  a failure leaves the node unconfigured, with the reason in the log and in /diagnostics.
* activate: start the loop (``trigger: state`` steps on every valid state, ``trigger: timer`` at
  ``control_rate_hz`` on the newest). In ``trigger: state`` the control-rate timer (stale check,
  deferred states) idles while fresh states keep coming; a 20 Hz watch timer restarts it in time.
  With ``loop_mode``/``chunk``/``monitor`` set the loop is ``mtm_runtime.chunk_loop.ChunkLoop``
  (chunks, the model on its own thread, the world-model monitor); in async mode the timer never
  idles (it streams the periods no state answered).
* ``autostart: true`` runs configure + activate at start-up; ``~/change_state`` stays usable.
* parameters: an update is checked as a whole set (no side effects), then applied to the live
  policy; one bad value refuses the set and changes nothing.
* SIGINT/SIGTERM (``main``): while active the shutdown ramp is published, then exit 0.
* /diagnostics: ``fault`` / ``fault_detail`` and the counters, at once on a fault (at most every
  ``DIAG_MIN_INTERVAL_S``) and at 1 Hz. Contract: ``docs/safety.md``. ``act`` latency is the time in
  ``policy.act()``, ``e2e`` from the state's arrival to the command's publication (async: from the
  arrival of the state the command's chunk was planned from), ``beyond_act`` e2e minus the act of
  the same step (the node's own time; not in async mode).
* Test backends: ``backend: external:package.module:Class`` only with ``MTM_ALLOW_EXTERNAL_BACKENDS=1``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger

from mtm_runtime import package_paths
from mtm_runtime import policy_params as pp
from mtm_runtime.chunk_loop import ChunkLoop
from mtm_runtime.control_loop import ControlLoop
from mtm_runtime.cpu_latency import CpuLatencyRequest
from mtm_runtime.loop_types import Command, Fault, FaultLog
from mtm_runtime.latency import LoopStats
from mtm_runtime.recording import RESIDUAL_TOPIC
from mtm_runtime.policy_params import (EXTERNAL_BACKENDS_ENV, PARAMETERS,  # noqa: F401 - re-exported
                                       load_external_policy)
from mtm_runtime.ros_nodes import conversions as conv
from mtm_runtime.ros_nodes.checked_parameters import CheckedParameters
from mtm_runtime.ros_nodes.control_timer import ControlTimer
from mtm_runtime.ros_nodes.diagnostics import DiagnosticsReporter, policy_status
from mtm_runtime.ros_nodes.executors import run_node, settle_heap
from mtm_runtime.ros_nodes.policy_topics import LATCHED_QOS, RELIABLE_QOS, STATE_QOS_PROFILES, CommandOutput

NODE_NAME = "mtm_policy"

PolicyLoader = Callable[[str, str, str], Any]


class PolicyNode(CheckedParameters, LifecycleNode):
    """Lifecycle node running an MTM policy; ``policy_loader(path, backend, mode)`` is injectable."""

    def __init__(self, node_name: str = NODE_NAME, *, context: Any = None, cli_args: list[str] | None = None,
                 parameter_overrides: list[Parameter] | None = None,
                 policy_loader: PolicyLoader | None = None) -> None:
        super().__init__(node_name, context=context, cli_args=cli_args, parameter_overrides=parameter_overrides)
        self._loader = policy_loader or self._load_policy
        self.declare_checked_parameters(PARAMETERS)
        self.lifecycle_state = "unconfigured"
        self.loop: ControlLoop | None = None
        self._idle_stats = LoopStats()  # what diagnostics read while no loop exists
        self.executor_name = ""
        self._config_error = ""
        self._configuring: dict[str, Any] = {}   # the checked values of the configure in progress
        self.config_failures = 0
        self._wake_request = CpuLatencyRequest()  # held while active (cpu_wake_latency_us >= 0)
        self._wake_latency_us = -1
        self._reset_entities()
        self._diag = DiagnosticsReporter(self, f"{self.get_name()}: policy loop", self._diagnostic_status)
        self.faults = FaultLog(on_note=lambda kind, detail: self._diag.event())  # a fault: report it at once
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _reset_entities(self) -> None:
        self._subs: list[Any] = []
        self._out: CommandOutput | None = None
        self._residual_pub: Any = None   # monitor: true only
        self._control: ControlTimer | None = None   # the control-rate timer (idles in trigger: state)
        self.loop = None
        self._joint_input = False
        self._joints: list[str] = []
        self._fields: list[str] = []

    # ---- what tests and tools read -----------------------------------------------------------
    @property
    def policy(self) -> Any:
        return self.loop.policy if self.loop is not None else None

    @property
    def stats(self) -> LoopStats:
        return self.loop.stats if self.loop is not None else self._idle_stats

    @property
    def watchdog(self) -> Any:
        return self.loop.watchdog if self.loop is not None else None

    # ---- parameters (ros_nodes/checked_parameters.py: the whole set checked, then applied) ------
    def check_update(self, changes: dict[str, Any]) -> tuple[str, str] | None:
        problem = pp.update(changes, self._values(), self.policy)
        live = [f"{k} -> {v!r}" for k, v in changes.items() if k in pp.DYNAMIC_PARAMS and self.policy is not None]
        if problem is None and live:
            self.get_logger().info(", ".join(live))
        return problem

    def on_refused(self, what: str) -> None:
        self.faults.note("param_refused", what)

    def _load_policy(self, path: str, backend: str, mode: str) -> Any:
        values = self._configuring   # the values _configure checked (robot file applied once)
        return pp.load_policy(path, backend, mode, int(values["inference_threads"]), pp.configured_limits(values),
                              batch_size=2 if values["monitor"] else 1)

    # ---- lifecycle -------------------------------------------------------------------------
    def _autostart(self) -> None:
        if self._autostart_timer is not None:
            self.destroy_timer(self._autostart_timer)
        if self.lifecycle_state != "unconfigured":
            return
        self.trigger_configure()
        if self.lifecycle_state == "inactive":
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as e:  # noqa: BLE001 - any failure leaves the node unconfigured
            self._teardown()
            self._config_error = f"configure failed: {e}"
            self.config_failures += 1
            self._idle_stats.last_fault_reason = self._config_error
            self.faults.note("configure_failed", self._config_error)
            self.get_logger().error(self._config_error)
            return TransitionCallbackReturn.FAILURE
        self._config_error = ""
        self.faults.clear("configure_failed")
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        values = pp.with_robot(self._values())   # a robot file fills the joints, fields, command type, topic, rate
        pp.checked_values(values)
        self._configuring = values
        path = str(package_paths.resolve(str(values["model_path"])))  # package://... -> its share directory
        mode = str(values["mask_mode"])
        policy = self._loader(path, str(values["backend"]), mode)
        pp.check_model_fits(policy, values, path)
        self._joint_input = values["input_type"] == "joint_state"
        policy.set_mode(mode, **pp.mode_kwargs(values))
        chunk = pp.chunk_config(values)
        hooks: dict[str, Any] = dict(clock_ns=self._clock_ns, faults=self.faults, stats=self._idle_stats, log=self._log)
        if chunk.monitor:   # each plan's residual, for the recording (mtm_runtime.recording.RESIDUAL_TOPIC)
            self._residual_pub = self.create_publisher(Float64MultiArray, RESIDUAL_TOPIC, RELIABLE_QOS)
        loop = (ChunkLoop(policy, pp.loop_config(values), chunk, on_residual=self._publish_residual, **hooks)
                if chunk.active else ControlLoop(policy, pp.loop_config(values), **hooks))
        self._joints, self._fields = list(values["joint_names"]), list(values["state_fields"])
        self._wake_latency_us = int(values["cpu_wake_latency_us"])
        if int(values["warmup_iters"]):
            policy.warmup(int(values["warmup_iters"]))
        policy.reset()
        self.loop = loop
        self._out = CommandOutput(self, str(values["command_type"]), str(values["command_topic"]), self._joints,
                                  str(values["command_interface"]), loop.period_s, loop.limits.width)
        state_qos = STATE_QOS_PROFILES[str(values["state_qos"])]
        # reward first: for messages ready in the same wait, the executor serves it before the state
        for msg_type, topic, callback, qos in (
                (Float64, "reward", self._on_reward, RELIABLE_QOS),
                (Float64MultiArray, "goal", self._on_goal, LATCHED_QOS),
                (Float64, "target_return", self._on_target_return, LATCHED_QOS),
                (JointState, "joint_states", self._on_joint_state, state_qos) if self._joint_input
                else (Float64MultiArray, "observation", self._on_observation, state_qos)):
            self._subs.append(self.create_subscription(msg_type, topic, callback, qos))
        self.get_logger().info(f"configured: {path} backend={policy.backend_name} mode={mode} "
                               f"spec={policy.spec.describe()} limits low={loop.limits.low.tolist()} "
                               f"high={loop.limits.high.tolist()}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.loop is not None
        self.loop.activate(time.monotonic())
        self._control = ControlTimer(self, self.loop, self._on_tick)
        settle_heap()  # the model is loaded: keep full GC passes out of the loop (see executors)
        problem = self._wake_request.hold(self._wake_latency_us)  # mtm_runtime/cpu_latency.py
        if problem:
            self.get_logger().warning(problem)
        self.lifecycle_state = "active"
        self.get_logger().info(f"active: trigger={self.loop.config.trigger} rate={self.loop.config.rate_hz:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_loop_timers()
        self._wake_request.release()
        if self.loop is not None:
            self.loop.deactivate()
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _destroy_loop_timers(self) -> None:
        if self._control is not None:
            self._control.destroy()
        self._control = None

    def _teardown(self) -> None:
        self._idle_stats = self.stats  # the counters stay readable until the next activation
        if self.loop is not None and self.loop.active:  # shutdown from active: the model thread stops first
            self.loop.deactivate()
        self._destroy_loop_timers()
        self._wake_request.release()
        for s in self._subs:
            self.destroy_subscription(s)
        if self._out is not None:
            self._out.destroy()
        if self._residual_pub is not None:
            self.destroy_publisher(self._residual_pub)
        self._reset_entities()

    def _torn_down(self, lifecycle_state: str) -> TransitionCallbackReturn:
        self._teardown()
        self.lifecycle_state = lifecycle_state
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._torn_down("unconfigured")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._torn_down("finalized")

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._torn_down("unconfigured")

    # ---- inputs ----------------------------------------------------------------------------
    def _clock_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _log(self, what: str, text: str) -> None:
        """The loop's log lines; rejections and faults are throttled separately (one call site each)."""
        if what == "info":
            self.get_logger().info(text)
        elif what == "rejected":
            self.get_logger().warning(text, throttle_duration_sec=1.0)
        else:
            self.get_logger().warning(text, throttle_duration_sec=1.0)

    # (a destroyed subscription's or timer's callback may still run once at shutdown: no loop then)
    def _on_observation(self, msg: Float64MultiArray) -> None:
        if self.loop is not None:
            self._emit(self.loop.on_state(conv.multiarray_to_array(msg), self._clock_ns(), time.monotonic()))

    def _on_joint_state(self, msg: JointState) -> None:
        t_in = time.monotonic()
        if self.loop is None:
            return
        try:
            state = conv.joint_state_to_array(msg, self._joints, self._fields)
        except conv.ConversionError as e:
            self.loop.reject(str(e))
            return
        self._emit(self.loop.on_state(state, conv.stamp_to_ns(msg.header.stamp), t_in, stamped=True))

    def _on_reward(self, msg: Float64) -> None:
        if self.loop is not None:
            self.loop.on_reward(msg.data)

    def _on_goal(self, msg: Float64MultiArray) -> None:
        self._set_from_topic("goal", conv.multiarray_to_array(msg).tolist())

    def _on_target_return(self, msg: Float64) -> None:
        self._set_from_topic("target_return", float(msg.data))

    def _set_from_topic(self, name: str, value: Any) -> None:
        result = self.set_parameters([Parameter(name, value=value)])[0]
        if not result.successful:
            self.get_logger().warning(f"'{name}' topic value refused: {result.reason}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.lifecycle_state != "active" or self.loop is None:  # activation starts a new episode anyway
            response.success, response.message = False, f"not active ({self.lifecycle_state})"
        else:
            self.loop.reset("reset service")
            response.success, response.message = True, f"new episode ({self.stats.episode_resets} resets)"
        return response

    # ---- the loop --------------------------------------------------------------------------
    def _on_tick(self) -> None:
        """Every period: the loop's stale check and pending step (``ros_nodes/control_timer.py``:
        the timer idles in ``trigger: state`` while it has nothing to do)."""
        if self.loop is None:
            return
        out = self.loop.on_tick(time.monotonic())
        if out is not None:
            self._emit(out)
        elif self._control is not None:
            self._control.idle_if_fresh()

    def _emit(self, out: Command | Fault | None) -> None:
        """Publish what the loop returned; a deferred state wakes the control timer."""
        if out is None:
            if self.loop is not None and self.loop.pending and self._control is not None:
                self._control.wake()
            return
        self._publish(out.action, out.stamp_ns)
        if isinstance(out, Command):
            e2e = time.monotonic() - out.arrival
            self.stats.e2e_latency.add(e2e)
            if out.act_s is not None:   # the node's own time on this step: all but act()
                self.stats.beyond_act_latency.add(e2e - out.act_s)

    def safe_stop(self) -> int:
        """Publish the shutdown ramp (rate-limited, bounded) if active; returns commands sent."""
        if self.lifecycle_state != "active" or self._out is None or self.loop is None:
            return 0
        ramp = self.loop.safe_stop_commands()
        for n, out in enumerate(ramp):
            if n:
                time.sleep(self.loop.period_s)  # the actuator gets one period per ramp step
            self._publish(out.action, out.stamp_ns)
        return len(ramp)

    def _publish_residual(self, residual: np.ndarray) -> None:
        if self._residual_pub is not None:
            self._residual_pub.publish(conv.array_to_multiarray(residual, "state_residual"))

    def _publish(self, cmd: np.ndarray, stamp_ns: int) -> None:
        if self._out is not None:
            self._out.publish(cmd, stamp_ns)

    # ---- diagnostics -----------------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, object]:
        vals: dict[str, object] = {"lifecycle_state": self.lifecycle_state, "mode": self.p("mask_mode"),
                                   "backend": getattr(self.policy, "backend_name", self.p("backend")),
                                   "executor": self.executor_name, "trigger": self.p("trigger"),
                                   **self.stats.report(), "param_refusals": self.param_refusals,
                                   "config_failures": self.config_failures,
                                   "last_fault_reason": self.stats.last_fault_reason or "none",
                                   # publishers matched on the state topic: 0 with states_in 0 is discovery
                                   "state_publishers": self._subs[-1].get_publisher_count() if self._subs else 0,
                                   "command_subscribers": self._out.subscribers() if self._out else 0,
                                   "cpu_wake_latency": self._wake_request.status,
                                   **(self.loop.report() if self.loop is not None else {})}
        return {**vals, **self.faults.report()}

    def _diagnostic_status(self) -> tuple[int, str, dict[str, object], str]:
        stale = self.lifecycle_state == "active" and self.loop is not None and self.loop.watchdog.stale()
        level, text = policy_status(self._config_error, self.lifecycle_state, stale, self.faults.active())
        return level, text, self.diagnostics_values(), str(self.p("model_path"))


def _stop(node: PolicyNode, executor: Any, signal_name: str) -> None:
    """SIGINT/SIGTERM: the fault action (a rate-limited ramp) while active, then the shutdown transition."""
    sent = node.safe_stop()
    node.get_logger().info(f"{signal_name} in state {node.lifecycle_state}: "
                           f"{sent} safe command(s) published, shutting down")
    if sent and node._out is not None:
        node._out.wait_acked(0.5)
    if node.lifecycle_state in ("unconfigured", "inactive", "active"):
        node.trigger_shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point ``mtm_policy_node`` (accepts ``--ros-args -p ... --params-file ...``)."""
    return run_node(lambda context: PolicyNode(context=context), sys.argv if argv is None else argv,
                    on_stop=_stop)


if __name__ == "__main__":
    sys.exit(main())
