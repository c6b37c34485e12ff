"""mtm_policy_node: the MTM policy as a ROS 2 lifecycle node.

Thin by design: message conversion lives in ``ros_nodes.conversions``, limits / rate limiting /
watchdog / fault actions / input validation in ``mtm_runtime.safety``, statistics in
``mtm_runtime.latency``, and the model behind ``mtm_runtime.policy.Policy``.

Lifecycle
* configure: load the model (``Policy.load``), check its spec against ``state_width`` /
  ``joint_names``, build limits and the fault action, warm up. Failure -> FAILURE (stays
  unconfigured); the reason is logged and published in /diagnostics.
* activate: arm the stale-input watchdog and start the loop (``trigger: state`` steps on every
  valid state; ``trigger: timer`` steps at ``control_rate_hz`` on the newest state). In
  ``trigger: state`` the control-rate timer (stale check, deferred states) is cancelled while
  fresh states keep coming and restarted by a 20 Hz watch timer before the input can go stale.
* ``autostart: true`` runs configure + activate at start-up; ``~/change_state`` stays usable.

Each step: validated state -> ``policy.act(state, reward)`` -> limits -> rate limit -> publish.
Faults answered with the fault action (``hold`` | ``zeros`` | ``safe``), counted, reported:
* stale input: no valid state for ``stale_timeout`` s -> fault action every control period until
  fresh states return. If the gap exceeded ``stale_reset_s`` the policy starts a new episode
  (its history describes a trajectory that no longer connects to the present).
* overrun: act() took longer than one control period -> the fault action for that tick.
* act() raising -> the fault action for that tick.
Every published command is inside the limits and obeys the rate limit (fault actions included);
after activation the rate limiter starts from the fault action with no history (zeros clipped into
the limits, or ``safe_action``), so the first commands ramp from there.

Safety contract (``docs/safety.md``, numbers in ``mtm_runtime.safety_contract``):
* /diagnostics carries ``fault`` (the active fault kind, ``none``) and ``fault_detail``; the level
  is the worst active fault's (held ``FAULT_HOLD_S`` after its last occurrence). A fault
  publishes /diagnostics at once (at most every ``DIAG_MIN_INTERVAL_S``), besides the 1 Hz report.
* JointState inputs must have strictly increasing stamps within an episode; with
  ``max_state_age > 0`` (clocks in one domain) stamps older than that or more than
  ``max_future_s`` ahead of the node's clock are rejected too. JointState commands carry the
  stamp of the state they were computed from; fault commands carry the node's clock.
* ``trigger: state`` steps at most ``max_input_rate_factor`` times per period: a flood of states
  is deferred to the next tick, so it cannot multiply the per-step rate limit.
* SIGINT/SIGTERM (``main``): while active the fault action is published (a rate-limited ramp of at
  most ``SHUTDOWN_RAMP_MAX_STEPS`` commands), then the node shuts down and exits 0.
* Test backends: with ``MTM_ALLOW_EXTERNAL_BACKENDS=1`` in the environment (tests only),
  ``backend: external:package.module:Class`` loads a checkpoint directory and runs it through
  that ``mtm_runtime.backends.Backend`` subclass. Without the variable it is refused.

Latency: ``act`` = time inside policy.act(); ``e2e`` = from the state's arrival in this node to
the command's publication (includes the wait for the timer in ``trigger: timer``).
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import rclpy
import rclpy.duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger

from mtm_runtime import package_paths
from mtm_runtime import safety_contract as contract
from mtm_runtime.latency import LoopStats
from mtm_runtime.safety import (FAULT_KINDS, ActionLimits, FaultAction, RateLimiter, StaleWatchdog,
                                UnsafeCommandError, intersect_limits, state_rejection_reason)
from ros_nodes import conversions as conv
from ros_nodes.executors import run_node, settle_heap

NODE_NAME = "mtm_policy"
TRIGGERS = ("state", "timer")
COMMAND_TYPES = ("float64_multiarray", "joint_state")
INPUT_TYPES = ("float64_multiarray", "joint_state")
#: Parameters applied while running (validated by the parameter callback); all others take
#: effect at the next configure and may only change while unconfigured.
DYNAMIC_PARAMS = ("mask_mode", "target_return", "goal")

#: ``trigger: state``: how often a coarse timer checks whether the idle control-rate timer must
#: restart (see ``PolicyNode._on_tick``); 20 wake-ups/s instead of one per control period.
WATCH_PERIOD_S = 0.05
COMMAND_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

PolicyLoader = Callable[[str, str, str], Any]


def _desc(text: str, *, lo: float | None = None, hi: float | None = None, ilo: int | None = None,
          ihi: int | None = None, choices: Sequence[str] = ()) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, dynamic_typing=True)
    if lo is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    if ilo is not None:
        d.integer_range = [IntegerRange(from_value=int(ilo), to_value=int(ihi), step=1)]
    if choices:
        d.additional_constraints = "one of: " + ", ".join(choices)
    return d


#: name -> (default, descriptor). Numbers use dynamic typing so YAML ``100`` works for a double.
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "model_path": ("", _desc("checkpoint directory, .onnx or .engine")),
    "backend": ("torch", _desc("inference backend passed to Policy.load (torch, onnxruntime, ...)")),
    "mask_mode": ("bc", _desc("inference mode (bc, rcbc, goal, ...); changeable at run time")),
    "target_return": (0.0, _desc("target return for rcbc (task reward units); run time", lo=-1e12, hi=1e12)),
    "goal": ([], _desc("goal vector for goal mode (empty = unset); run time")),
    "control_rate_hz": (50.0, _desc("control rate; also the act() time budget (1/rate)", lo=1.0, hi=2000.0)),
    "trigger": ("state", _desc("step on each state or on a timer", choices=TRIGGERS)),
    "command_type": ("float64_multiarray", _desc("message type on 'commands'", choices=COMMAND_TYPES)),
    "command_interface": ("effort", _desc("JointState field for commands", choices=conv.JOINT_FIELDS)),
    "input_type": ("float64_multiarray", _desc("state input: 'observation' Float64MultiArray or "
                                               "'joint_states' JointState", choices=INPUT_TYPES)),
    "joint_names": ([], _desc("joint order for JointState input/commands (empty = message order)")),
    "state_fields": (["position", "velocity"], _desc("JointState fields concatenated into the state")),
    "state_width": (0, _desc("expected state width (0 = take the model's)", ilo=0, ihi=100000)),
    "action_low": ([], _desc("narrow the checkpoint's lower action limits (empty = keep)")),
    "action_high": ([], _desc("narrow the checkpoint's upper action limits (empty = keep)")),
    "max_rate": (0.0, _desc("max command change per step per dimension (actuator units; 0 = off)",
                            lo=0.0, hi=1e9)),
    "stale_timeout": (0.25, _desc("seconds without a valid state before the fault action", lo=0.001, hi=3600.0)),
    "stale_reset_s": (1.0, _desc("a stale gap longer than this starts a new policy episode (s)",
                                 lo=0.0, hi=1e6)),
    "fault_action": ("hold", _desc("command on a fault", choices=FAULT_KINDS)),
    "safe_action": ([], _desc("the action for fault_action=safe (inside the limits)")),
    "warmup_iters": (10, _desc("act() calls at configure to warm the backend", ilo=0, ihi=10000)),
    "inference_threads": (1, _desc("torch intra-op threads for the default loader (0 = library default)",
                                   ilo=0, ihi=256)),
    "autostart": (False, _desc("configure and activate at start-up (no lifecycle manager needed)")),
    "max_state_age": (0.0, _desc("reject JointState stamps older than this vs the node clock (s; 0 = off: "
                                 "only needs stamps to increase)", lo=0.0, hi=3600.0)),
    "max_future_s": (0.05, _desc("with max_state_age > 0: reject stamps this far ahead of the node clock (s)",
                                 lo=0.0, hi=3600.0)),
    "max_input_rate_factor": (contract.MAX_INPUT_RATE_FACTOR,
                              _desc("trigger=state: at most this many steps per control period", lo=1.0, hi=100.0)),
}
#: Parameters whose value is a list. The rcl YAML parser cannot type an empty list: a params file's
#: ``goal: []`` leaves the parameter unset (None), which reads as the empty list here.
LIST_PARAMS = frozenset(name for name, (default, _desc_) in PARAMETERS.items() if isinstance(default, list))
#: Prefix of the test-only backend form ``external:module:Class`` (needs EXTERNAL_BACKENDS_ENV=1).
EXTERNAL_PREFIX = "external:"
EXTERNAL_BACKENDS_ENV = "MTM_ALLOW_EXTERNAL_BACKENDS"


def load_external_policy(path: str, spec_str: str, mode: str) -> Any:
    """``external:module:Class`` -> a Policy on that Backend subclass (tests only; see module doc)."""
    from mtm_runtime.backends import Backend
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.policy import Policy

    if os.environ.get(EXTERNAL_BACKENDS_ENV) != "1":
        raise ValueError(f"backend {spec_str!r}: external backends are for tests; set {EXTERNAL_BACKENDS_ENV}=1")
    target = spec_str[len(EXTERNAL_PREFIX):]
    module, _, cls_name = target.partition(":")
    if not module or not cls_name:
        raise ValueError(f"backend {spec_str!r}: expected external:package.module:Class")
    cls = getattr(importlib.import_module(module), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(f"backend {spec_str!r}: {cls_name} is not a mtm_runtime Backend subclass")
    ckpt = load_checkpoint(path)
    return Policy(ckpt.spec, ckpt.normaliser, cls(ckpt.spec), ckpt.action_limits, mode, ckpt.metadata())


def _floats(value: Any) -> list[float]:
    return [float(v) for v in (value or [])]


class PolicyNode(LifecycleNode):
    """Lifecycle node running an MTM policy; ``policy_loader(path, backend, mode)`` is injectable."""

    def __init__(self, node_name: str = NODE_NAME, *, context: Any = None, cli_args: list[str] | None = None,
                 parameter_overrides: list[Parameter] | None = None,
                 policy_loader: PolicyLoader | None = None) -> None:
        super().__init__(node_name, context=context, cli_args=cli_args, parameter_overrides=parameter_overrides)
        self._loader = policy_loader or self._load_policy
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.lifecycle_state = "unconfigured"
        self.stats = LoopStats()
        self.policy: Any = None
        self.executor_name = ""
        self._config_error = ""
        self.param_refusals = 0
        self.config_failures = 0
        self._faults_seen: dict[str, tuple[float, str]] = {}  # kind -> (monotonic time, detail)
        self._last_diag_t = 0.0
        self._reset_entities()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_pending = False
        self._diag_timer = self.create_timer(contract.DIAG_MIN_INTERVAL_S, self._on_diag_timer)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _reset_entities(self) -> None:
        self._subs: list[Any] = []
        self._cmd_pub: Any = None
        self._timer: Any = None        # control-rate timer (cancelled while idle in trigger: state)
        self._watch_timer: Any = None  # trigger: state only, WATCH_PERIOD_S: wakes the control timer
        self._newest: tuple[np.ndarray, int, float] | None = None
        self._reward_acc: float | None = None
        self._episode_steps = 0
        self._last_cmd: np.ndarray | None = None
        self._last_stamp_ns: int | None = None
        self._last_step_t = -math.inf
        self._last_arrival_t = -math.inf
        self._trigger, self._command_type, self._command_interface = "state", "float64_multiarray", "effort"

    # ---- parameters ------------------------------------------------------------------------
    def p(self, name: str) -> Any:
        value = self.get_parameter(name).value
        return [] if value is None and name in LIST_PARAMS else value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            reason = self._check_parameter(prm.name, prm.value)
            if reason:
                self.get_logger().warning(f"refused {prm.name}={prm.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        """rclpy's, plus: every refusal (descriptor range or our callback) is counted and reported."""
        results = super().set_parameters(parameter_list)
        for prm, res in zip(parameter_list, results):
            self._count_refusal([prm], res)
        return results

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """rclpy's (the ``~/set_parameters`` service uses it), plus refusals counted and reported."""
        res = super().set_parameters_atomically(parameter_list)
        self._count_refusal(parameter_list, res)
        return res

    def _count_refusal(self, params: list[Parameter], res: SetParametersResult) -> None:
        if not res.successful:
            self.param_refusals += 1
            names = ", ".join(f"{p.name}={p.value!r}" for p in params)
            self._note_fault("param_refused", f"{names}: {res.reason}")

    def _check_parameter(self, name: str, value: Any) -> str | None:
        """None if ``value`` is acceptable for ``name`` now (and applied to a live policy), else why not."""
        if name not in PARAMETERS:
            return None
        configured = self.policy is not None
        if configured and name not in DYNAMIC_PARAMS:
            return f"'{name}' takes effect at configure; clean up the node first"
        _default, desc = PARAMETERS[name]
        try:
            if desc.floating_point_range:
                r = desc.floating_point_range[0]
                v = float(value)
                if not (math.isfinite(v) and r.from_value <= v <= r.to_value):
                    return f"{name} must be in [{r.from_value}, {r.to_value}], got {value!r}"
            if desc.integer_range:
                r = desc.integer_range[0]
                if int(value) != value or not r.from_value <= int(value) <= r.to_value:
                    return f"{name} must be an integer in [{r.from_value}, {r.to_value}], got {value!r}"
            if desc.additional_constraints.startswith("one of") and value not in desc.additional_constraints[8:].split(", "):
                return f"{name} must be {desc.additional_constraints}, got {value!r}"
            if name in ("goal", "action_low", "action_high", "safe_action", "joint_names", "state_fields"):
                if not isinstance(value, (list, tuple)) and not hasattr(value, "__len__"):
                    return f"{name} must be a list, got {value!r}"
                if name in ("goal", "action_low", "action_high", "safe_action"):
                    vals = _floats(value)
                    if not all(math.isfinite(v) for v in vals):
                        return f"{name} must be finite numbers"
        except (TypeError, ValueError) as e:
            return f"{name}: invalid value {value!r} ({e})"
        if not configured:
            return None
        try:  # live change: the Policy validates and keeps its old value on refusal
            if name == "mask_mode":
                self.policy.set_mode(str(value), **self._mode_kwargs(str(value)))
            elif name == "target_return":
                self.policy.set_target_return(float(value))
            elif name == "goal" and len(value):
                self.policy.set_goal(np.asarray(_floats(value), dtype=np.float32))
        except (ValueError, TypeError) as e:
            return str(e) or type(e).__name__
        self.get_logger().info(f"{name} -> {value!r}")
        return None

    def _mode_kwargs(self, mode: str) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if mode == "rcbc":
            kw["target_return"] = float(self.p("target_return"))
        goal = _floats(self.p("goal"))
        if mode == "goal" or goal:
            kw["goal"] = np.asarray(goal, dtype=np.float32) if goal else None
        return kw

    def _load_policy(self, path: str, backend: str, mode: str) -> Any:
        """Default loader: ``Policy.load``; torch backends get ``inference_threads`` threads
        (1 by default: on a couple of shared cores one thread has the lowest jitter)."""
        from mtm_runtime.policy import Policy

        if backend.startswith(EXTERNAL_PREFIX):
            return load_external_policy(path, backend, mode)
        opts: dict[str, Any] = {}
        threads = int(self.p("inference_threads"))
        if threads and (backend or "torch").startswith("torch") and not path.endswith((".onnx", ".engine")):
            opts["threads"] = threads
        return Policy.load(path, backend=backend, mode=mode, **opts)

    # ---- lifecycle -------------------------------------------------------------------------
    def _autostart(self) -> None:
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
            self._config_error = f"configure failed: {e}"
            self.config_failures += 1
            self._note_fault("configure_failed", self._config_error)
            self.stats.last_fault_reason = self._config_error
            self.get_logger().error(self._config_error)
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self._config_error = ""
        self._faults_seen.pop("configure_failed", None)
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        for name in PARAMETERS:  # values from overrides / params files were not seen by the callback
            reason = self._check_parameter(name, self.p(name))
            if reason:
                raise ValueError(reason)
        path, backend, mode = str(self.p("model_path")), str(self.p("backend")), str(self.p("mask_mode"))
        self._trigger, self._command_type = str(self.p("trigger")), str(self.p("command_type"))
        self._command_interface = str(self.p("command_interface"))
        if not path:
            raise ValueError("parameter model_path is empty")
        path = str(package_paths.resolve(path))  # package://mtm_runtime/models/... -> its share directory
        policy = self._loader(path, backend, mode)
        spec = policy.spec
        sw, aw = spec.width("states"), spec.width("actions")
        joints = list(self.p("joint_names"))
        fields = list(self.p("state_fields"))
        want = int(self.p("state_width"))
        if want and want != sw:
            raise ValueError(f"state_width is {want} but the model {path} expects states of width {sw}")
        if self.p("input_type") == "joint_state" and joints and len(joints) * len(fields) != sw:
            raise ValueError(f"{len(joints)} joint_names x {len(fields)} state_fields = "
                             f"{len(joints) * len(fields)} values, the model's states have width {sw}")
        if self.p("command_type") == "joint_state" and joints and len(joints) != aw:
            raise ValueError(f"{len(joints)} joint_names but the model's actions have width {aw}")
        if mode not in policy.modes:
            raise ValueError(f"mask_mode {mode!r} is not valid for this model (modes: {', '.join(policy.modes)})")
        policy.set_mode(mode, **self._mode_kwargs(mode))
        self.limits: ActionLimits = intersect_limits(policy.limits, _floats(self.p("action_low")),
                                                     _floats(self.p("action_high")))
        self.rate_limiter = RateLimiter.from_parameter(float(self.p("max_rate")), aw)
        self.fault = FaultAction(str(self.p("fault_action")), self.limits, _floats(self.p("safe_action")))
        self.watchdog = StaleWatchdog(float(self.p("stale_timeout")))
        self.period_s = 1.0 / float(self.p("control_rate_hz"))
        self._min_step_s = self.period_s / float(self.p("max_input_rate_factor"))
        # trigger: state: the control timer may idle only while the input stays fresh for longer
        # than this (one watch period to notice, two control periods of margin)
        self._idle_guard_s = WATCH_PERIOD_S + 2 * self.period_s
        self._max_age_ns = int(float(self.p("max_state_age")) * 1e9)
        self._max_future_ns = int(float(self.p("max_future_s")) * 1e9)
        self.state_width, self.action_width = sw, aw
        self._joints, self._fields = joints, fields
        n = int(self.p("warmup_iters"))
        if n:
            policy.warmup(n)
        policy.reset()
        self.policy = policy
        self._cmd_pub = self.create_publisher(
            JointState if self.p("command_type") == "joint_state" else Float64MultiArray, "commands", COMMAND_QOS)
        # reward first: for messages ready in the same wait, the executor serves it before the state
        self._subs.append(self.create_subscription(Float64, "reward", self._on_reward, RELIABLE_QOS))
        self._subs.append(self.create_subscription(Float64MultiArray, "goal", self._on_goal, LATCHED_QOS))
        self._subs.append(self.create_subscription(Float64, "target_return", self._on_target_return, LATCHED_QOS))
        if self.p("input_type") == "joint_state":
            self._subs.append(self.create_subscription(JointState, "joint_states", self._on_joint_state,
                                                       qos_profile_sensor_data))
        else:
            self._subs.append(self.create_subscription(Float64MultiArray, "observation", self._on_observation,
                                                       qos_profile_sensor_data))
        self.get_logger().info(f"configured: {path} backend={policy.backend_name} mode={mode} spec={spec.describe()} "
                               f"limits low={self.limits.low.tolist()} high={self.limits.high.tolist()}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stats = LoopStats()
        self.policy.reset()
        self.rate_limiter.reset(self.fault.action(None))  # ramp from the resting command
        self._newest, self._reward_acc, self._episode_steps, self._last_cmd = None, None, 0, None
        self._last_stamp_ns, self._last_step_t, self._last_arrival_t = None, -math.inf, -math.inf
        self._faults_seen.pop("stale_input", None)
        self.watchdog.arm()
        self._timer = self.create_timer(self.period_s, self._on_tick)
        if self._trigger == "state":
            self._watch_timer = self.create_timer(WATCH_PERIOD_S, self._on_watch)
        settle_heap()  # the model is loaded: keep full GC passes out of the loop (see executors)
        self.lifecycle_state = "active"
        self.get_logger().info(f"active: trigger={self.p('trigger')} rate={1.0 / self.period_s:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_loop_timers()
        self.watchdog.disarm()
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _destroy_loop_timers(self) -> None:
        for t in (self._timer, self._watch_timer):
            if t is not None:
                self.destroy_timer(t)
        self._timer = self._watch_timer = None

    def _teardown(self) -> None:
        self._destroy_loop_timers()
        for s in self._subs:
            self.destroy_subscription(s)
        if self._cmd_pub is not None:
            self.destroy_publisher(self._cmd_pub)
        self.policy = None
        self._reset_entities()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.lifecycle_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    # ---- inputs ----------------------------------------------------------------------------
    def _on_observation(self, msg: Float64MultiArray) -> None:
        self._accept(conv.multiarray_to_array(msg), self.get_clock().now().nanoseconds)

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            state = conv.joint_state_to_array(msg, self._joints, self._fields)
        except conv.ConversionError as e:
            self._reject(str(e))
            return
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if self.lifecycle_state == "active":
            if self.watchdog.age() > float(self.p("stale_reset_s")):
                self._last_stamp_ns = None  # a new episode will start: old stamps are void
            reason = self._stamp_rejection(stamp)
            if reason:
                self._reject(reason)
                return
        self._accept(state, stamp)

    def _stamp_rejection(self, stamp_ns: int) -> str | None:
        """None if the stamp is acceptable (increasing; within max_state_age / max_future_s of now)."""
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            return (f"state stamp {stamp_ns * 1e-9:.6f} s is not after the previous one "
                    f"({self._last_stamp_ns * 1e-9:.6f} s): duplicate or out of order")
        if self._max_age_ns:
            now = self.get_clock().now().nanoseconds
            if now - stamp_ns > self._max_age_ns:
                return f"state stamp is {(now - stamp_ns) * 1e-9:.3f} s old (> max_state_age)"
            if stamp_ns - now > self._max_future_ns:
                return f"state stamp is {(stamp_ns - now) * 1e-9:.3f} s in the future (> max_future_s)"
        return None

    def _reject(self, reason: str) -> None:
        self.stats.rejected_inputs += 1
        self.stats.last_fault_reason = f"rejected input: {reason}"
        self._note_fault("rejected_input", reason)
        self.get_logger().warning(self.stats.last_fault_reason, throttle_duration_sec=1.0)

    def _accept(self, state: np.ndarray, stamp_ns: int) -> None:
        if self.lifecycle_state != "active":
            return
        t_in = time.monotonic()
        reason = state_rejection_reason(state, self.state_width)
        if reason:
            self._reject(reason)
            return
        # Flood guard on inter-arrival time (not on the time of the last step: a state deferred
        # to a tick would otherwise drag every following state onto the timer's phase, adding up
        # to a period of latency to a well-behaved stream).
        since_last_arrival, self._last_arrival_t = t_in - self._last_arrival_t, t_in
        if self._trigger == "state" and since_last_arrival < self._min_step_s:
            self._newest = (state, stamp_ns, t_in)  # flood: deferred to the next tick
            self._last_stamp_ns = stamp_ns
            self.watchdog.feed(t_in)
            self._wake_control_timer()
            return
        self._last_stamp_ns = stamp_ns
        gap = self.watchdog.feed(t_in)
        if gap > self.watchdog.timeout_s:
            self.get_logger().info(f"fresh input after {gap:.3f} s without one")
            if gap > float(self.p("stale_reset_s")) and self._episode_steps:
                self._new_episode(f"input gap of {gap:.3f} s")
        if self._trigger == "state":
            self._step(state, stamp_ns, t_in)
        else:
            self._newest = (state, stamp_ns, t_in)

    def _on_reward(self, msg: Float64) -> None:
        if math.isfinite(msg.data):
            self._reward_acc = (self._reward_acc or 0.0) + msg.data

    def _on_goal(self, msg: Float64MultiArray) -> None:
        self._set_from_topic("goal", conv.multiarray_to_array(msg).tolist())

    def _on_target_return(self, msg: Float64) -> None:
        self._set_from_topic("target_return", float(msg.data))

    def _set_from_topic(self, name: str, value: Any) -> None:
        result = self.set_parameters([Parameter(name, value=value)])[0]
        if not result.successful:
            self.get_logger().warning(f"'{name}' topic value refused: {result.reason}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.lifecycle_state != "active":  # activation starts a new episode anyway
            response.success, response.message = False, f"not active ({self.lifecycle_state})"
        else:
            self._new_episode("reset service")
            response.success, response.message = True, f"new episode ({self.stats.episode_resets} resets)"
        return response

    def _new_episode(self, why: str) -> None:
        self.policy.reset()
        self._reward_acc, self._episode_steps, self._newest = None, 0, None
        self._last_stamp_ns = None
        self.stats.episode_resets += 1
        self.get_logger().info(f"new episode: {why}")

    # ---- the loop --------------------------------------------------------------------------
    def _on_tick(self) -> None:
        """Every control period: watchdog, and in ``trigger: timer`` the step on the newest state.

        In ``trigger: state`` the states drive the loop, so this timer is cancelled while it has
        nothing to do (no deferred state, input fresh for longer than ``_idle_guard_s``): one wake-up
        and one callback less per period. ``_on_watch`` restarts it in time for the stale check,
        so the stale bound (``stale_timeout`` + 1 period) is the same as with a timer that never stops.
        """
        if self.watchdog.stale():
            self.stats.stale_ticks += 1
            self._publish_fault(f"stale input: no valid state for {self.watchdog.age():.3f} s "
                                f"(> {self.watchdog.timeout_s} s)", self.get_clock().now().nanoseconds,
                                "stale_input")
            return
        if self._newest is not None:  # timer trigger, or states deferred by a flood
            state, stamp_ns, t_in = self._newest
            self._newest = None
            self._step(state, stamp_ns, t_in)
        elif self._trigger == "state" and not self._stale_soon():
            self._timer.cancel()

    def _stale_soon(self) -> bool:
        """The input could go stale before the watch timer's next look (``_idle_guard_s``)."""
        return self.watchdog.age() + self._idle_guard_s >= self.watchdog.timeout_s

    def _on_watch(self) -> None:
        """``trigger: state``, every WATCH_PERIOD_S: restart the control timer before the input can go stale."""
        if self._stale_soon():
            self._wake_control_timer()

    def _wake_control_timer(self) -> None:
        if self._timer is not None and self._timer.is_canceled():
            self._timer.reset()  # next tick one period from now

    def _step(self, state: np.ndarray, stamp_ns: int, t_in: float) -> None:
        reward = self._reward_acc if self._episode_steps else None  # no reward precedes an episode's first act
        self._reward_acc = None
        t0 = time.monotonic()
        self._last_step_t = t0
        try:
            action = self.policy.act(state, reward=reward)  # Policy normalises into its float32 buffer
        except Exception as e:  # noqa: BLE001 - a failing model must not stop the loop
            self.stats.act_errors += 1
            self._publish_fault(f"act() raised {type(e).__name__}: {e}", self.get_clock().now().nanoseconds,
                                "act_error")
            return
        dt = time.monotonic() - t0
        self._episode_steps += 1
        self.stats.act_latency.add(dt)
        if dt > self.period_s:
            self.stats.overruns += 1
            self._publish_fault(f"inference overrun: act() took {dt * 1e3:.2f} ms > period "
                                f"{self.period_s * 1e3:.2f} ms", self.get_clock().now().nanoseconds, "overrun")
            return
        try:
            cmd = self.rate_limiter.apply(self.limits.clip(np.asarray(action, dtype=np.float32)))
        except UnsafeCommandError as e:
            self.stats.act_errors += 1
            self._publish_fault(f"unsafe command from the policy: {e}", self.get_clock().now().nanoseconds,
                                "unsafe_output")
            return
        self.stats.ticks += 1
        self._publish(cmd, stamp_ns)
        self.stats.e2e_latency.add(time.monotonic() - t_in)

    def _publish_fault(self, reason: str, stamp_ns: int, kind: str) -> None:
        """The fault action (through the rate limiter), stamped with the node's clock."""
        self.stats.fault(reason)
        self.get_logger().warning(reason, throttle_duration_sec=1.0)
        self._note_fault(kind, reason)
        cmd = self.rate_limiter.apply(self.fault.action(self._last_cmd))
        self._publish(cmd, stamp_ns)

    def _note_fault(self, kind: str, detail: str) -> None:
        """Remember a fault for /diagnostics and publish them now (at most every DIAG_MIN_INTERVAL_S)."""
        now = time.monotonic()
        self._faults_seen[kind] = (now, detail)
        if now - self._last_diag_t >= contract.DIAG_MIN_INTERVAL_S:
            self._publish_diagnostics()
        else:
            self._diag_pending = True  # the diagnostics timer sends it within DIAG_MIN_INTERVAL_S

    def active_faults(self) -> list[tuple[str, str]]:
        """(kind, detail) of faults seen within FAULT_HOLD_S, worst level first."""
        now = time.monotonic()
        live = [(k, d) for k, (t, d) in self._faults_seen.items() if now - t <= contract.FAULT_HOLD_S]
        return sorted(live, key=lambda kd: -contract.LEVELS[contract.CONTRACT[kd[0]].level])

    def safe_stop(self) -> int:
        """Publish the fault action (rate-limited ramp, bounded) if active; returns commands sent."""
        if self.lifecycle_state != "active" or self._cmd_pub is None:
            return 0
        self._note_fault("shutdown", "signal: stopping")
        target = self.fault.action(self._last_cmd)
        stamp = self.get_clock().now().nanoseconds
        for n in range(1, contract.SHUTDOWN_RAMP_MAX_STEPS + 1):
            cmd = self.rate_limiter.apply(target).copy()
            self._publish(cmd, stamp)
            if np.array_equal(cmd, target):
                return n
            time.sleep(self.period_s)  # the actuator gets one period per ramp step
        return contract.SHUTDOWN_RAMP_MAX_STEPS

    def _publish(self, cmd: np.ndarray, stamp_ns: int) -> None:
        if self._cmd_pub is None:
            return
        if self._command_type == "joint_state":
            msg = conv.array_to_joint_state(cmd, self._joints, conv.ns_to_stamp(stamp_ns), self._command_interface)
        else:
            msg = conv.array_to_multiarray(cmd)
        self._cmd_pub.publish(msg)
        self._last_cmd = cmd
        self.stats.published += 1
        self.stats.rate.tick()

    # ---- diagnostics -----------------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, object]:
        s = self.stats
        vals: dict[str, object] = {"lifecycle_state": self.lifecycle_state,
                                   "mode": self.p("mask_mode"),
                                   "backend": getattr(self.policy, "backend_name", self.p("backend")),
                                   "executor": self.executor_name,
                                   "trigger": self.p("trigger"),
                                   "rate_hz": s.rate.rate_hz()}
        for prefix, ring in (("act", s.act_latency), ("e2e", s.e2e_latency)):
            for k, v in ring.summary().as_ms().items():
                vals[f"{prefix}_{k}"] = v
        vals.update(s.counters())
        vals["param_refusals"] = self.param_refusals
        vals["config_failures"] = self.config_failures
        vals["last_fault_reason"] = s.last_fault_reason or "none"
        faults = self.active_faults()
        vals["fault"] = ",".join(k for k, _ in faults) or "none"
        vals["fault_detail"] = faults[0][1] if faults else "none"
        return vals

    def _on_diag_timer(self) -> None:
        """Every DIAG_MIN_INTERVAL_S: pending fault reports now, the periodic report at 1 Hz."""
        if self._diag_pending or time.monotonic() - self._last_diag_t >= 1.0:
            self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        if getattr(self, "_diag_pub", None) is None:
            return
        self._diag_pending = False
        self._last_diag_t = time.monotonic()
        vals = self.diagnostics_values()
        faults = self.active_faults()
        if self._config_error:
            level, text = DiagnosticStatus.ERROR, self._config_error
        elif self.lifecycle_state == "active" and self.watchdog.stale():
            level, text = DiagnosticStatus.WARN, "stale input"
        elif faults and faults[0][0] != "configure_failed":
            level, text = contract.LEVELS[contract.CONTRACT[faults[0][0]].level], f"{faults[0][0]}: {faults[0][1]}"
        elif self.lifecycle_state != "active":
            level, text = DiagnosticStatus.OK, self.lifecycle_state
        else:
            level, text = DiagnosticStatus.OK, "running"
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [conv.diagnostic_status(f"{self.get_name()}: policy loop", level, text, vals,
                                             hardware_id=str(self.p("model_path")))]
        self._diag_pub.publish(arr)




def _stop(node: PolicyNode, executor: Any, signal_name: str) -> None:
    """SIGINT/SIGTERM: the fault action (a rate-limited ramp) while active, then the shutdown transition."""
    sent = node.safe_stop()
    node.get_logger().info(f"{signal_name} in state {node.lifecycle_state}: "
                           f"{sent} safe command(s) published, shutting down")
    if sent and node._cmd_pub is not None:
        node._cmd_pub.wait_for_all_acked(timeout=rclpy.duration.Duration(seconds=0.5))
    if node.lifecycle_state in ("unconfigured", "inactive", "active"):
        node.trigger_shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point ``mtm_policy_node`` (accepts ``--ros-args -p ... --params-file ...``)."""
    return run_node(lambda context: PolicyNode(context=context), sys.argv if argv is None else argv,
                    on_stop=_stop)


if __name__ == "__main__":
    sys.exit(main())
