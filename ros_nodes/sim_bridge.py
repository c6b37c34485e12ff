"""mtm_sim_bridge: a MuJoCo task behind ROS 2 topics (hardware-in-the-loop stand-in): a benchmark task,
any Gymnasium MuJoCo id, or a user's MJCF through its robot file (``mtm_runtime.sim.tasks.get_task``).

Publishes ``observation`` (Float64MultiArray: the task's ``states`` part), ``joint_states``
(positions/velocities of ``task.joint_names``), ``reward`` (Float64, reliable), ``goal``
(Float64MultiArray, reliable transient-local, once per episode for goal tasks), ``/clock``
(sim time: ``steps * env.dt``), ``episode_stats`` (Float64MultiArray labelled
``episode, return, normalised_score, steps, success`` (success 1/0, NaN for tasks without a
criterion)) and /diagnostics; subscribes ``commands``.

Modes
* ``realtime``: a wall-clock timer at ``control_rate_hz`` applies the newest command (zeros
  before the first one) and steps, like hardware that does not wait for the controller.
* ``lockstep``: exactly one control step per received command; the next observation goes out
  only after the step. With the policy node on ``trigger: state`` this is deterministic: the
  ROS rollout reproduces the in-process rollout for the same seed. An observation that gets no
  command within ``lockstep_resend_s`` (lost, or the policy not active yet) is sent again.

Safety (``docs/safety.md``): a command that is non-finite or of the wrong width is ignored and
counted (``rejected_commands``); in ``realtime`` a command older than ``command_timeout_s`` is
replaced by zeros (``command_timeouts``, WARN in /diagnostics) until a fresh one arrives, so a
dead policy node never leaves the plant driven by its last command.

Episodes: at termination or the task's time limit the return and normalised score are logged
and published, the env is reset and the new goal published, then the bridge calls the policy node's ``~/reset`` service
(``policy_reset_service``; empty = none) and waits for its answer (at most ``reset_timeout_s``;
``start_wait_s`` before the first episode, while the policy node loads its model)
before the first observation of the next episode, so no state of the new episode can land in
the old history. In lockstep a refusal ("not active") is retried until the deadline, so the
first episode starts only once the policy node is active (and, with ``start_subscribers``, once
that many readers, e.g. the policy and a recorder, are matched on ``observation``, so that a
recording started with the loop holds every step). Episode ``k`` resets the env with seed
``seed + k``. ``episodes > 0`` stops the bridge (exit code 0) after that many episodes.

Known limits: the reward of step t is published just before observation t+1 on another topic;
DDS does not order across topics. The EventsExecutor serves events in arrival order and the
SingleThreadedExecutor serves the reward subscription first (created first), so on one host the
reward is counted for its step; under extreme load an RCBC return-to-go could shift by a step. A
lockstep resend (counted as ``lockstep_resends``) after an observation got *through* but its
command was slower than ``lockstep_resend_s`` makes the policy act twice on one state: that run
is no longer bit-reproducible (the results file records the count).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import Trigger

from mtm_runtime.ros_nodes import conversions as conv
from mtm_runtime.ros_nodes.executors import run_node
from mtm_runtime.sim.tasks import get_task

NODE_NAME = "mtm_sim_bridge"
#: episodes kept in memory and in ``results_path`` (oldest dropped first)
RESULTS_KEPT = 1000
MODES = ("realtime", "lockstep")
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Sensor outputs are published RELIABLE: that matches best-effort subscribers too.
SENSOR_OUT = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)

PARAMETERS: dict[str, tuple[Any, str]] = {
    "task": ("reacher", "benchmark task (reacher, hopper, ...), any Gymnasium MuJoCo id, or a robot file with sim.mjcf"),
    "mode": ("lockstep", "realtime | lockstep"),
    "control_rate_hz": (0.0, "realtime step rate (0 = the env's own rate, 1/env.dt)"),
    "seed": (0, "episode k resets with seed + k"),
    "episodes": (0, "stop after this many episodes (0 = run forever)"),
    "max_episode_steps": (0, "episode length in control steps (0 = the task's own, e.g. 50 for Reacher)"),
    "publish_observation": (True, "publish 'observation' (the task's states part)"),
    "publish_joint_states": (True, "publish 'joint_states' (positions/velocities of the task's joints)"),
    "command_type": ("float64_multiarray", "float64_multiarray | joint_state (effort field)"),
    "policy_reset_service": ("/mtm_policy/reset", "std_srvs/Trigger called at each episode start ('' = none)"),
    "reset_timeout_s": (2.0, "longest wait for the reset service (s)"),
    "lockstep_resend_s": (5.0, "lockstep: resend an observation unanswered for this long (s)"),
    "results_path": ("", "if set, per-episode results (the last RESULTS_KEPT) are written here as JSON"),
    "randomise": (False, "apply the domain randomisation below (mtm_runtime.sim.randomisation.Randomisation)"),
    "mass_scale": ([1.0, 1.0], "[low, high] body mass/inertia scale"),
    "friction_scale": ([1.0, 1.0], "[low, high] sliding friction scale"),
    "actuator_gain_scale": ([1.0, 1.0], "[low, high] actuator gear scale"),
    "obs_noise_std": (0.0, "Gaussian observation noise (observation units)"),
    "action_latency_steps": (0, "actions act this many control steps late"),
    "stamp_clock": ("sim", "joint_states stamps: 'sim' (sim time, as /clock) or 'ros' (this node's clock)"),
    "command_timeout_s": (0.5, "realtime: no valid command for this long -> zero action (0 = hold forever)"),
    "start_subscribers": (0, "before the first episode, wait until 'observation' has this many matched "
                             "subscriptions (e.g. 2: the policy and a recorder); 0 = start at once"),
    "start_wait_s": (10.0, "longest wait before the first episode for start_subscribers and for the policy's "
                           "reset service (s); then start anyway, with a warning"),
}


def _scale(v: Any) -> float | tuple[float, float]:
    vals = [float(x) for x in v] if isinstance(v, (list, tuple)) or hasattr(v, "__len__") else [float(v)]
    return vals[0] if len(vals) == 1 or vals[0] == vals[-1] else (vals[0], vals[1])


class SimBridge(Node):
    """One MuJoCo env stepped by ROS commands (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, *, context: Any = None, cli_args: list[str] | None = None,
                 parameter_overrides: list[Any] | None = None) -> None:
        super().__init__(node_name, context=context, cli_args=cli_args, parameter_overrides=parameter_overrides)
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text, dynamic_typing=True))
        p = self.p
        self.mode = str(p("mode"))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.task = get_task(str(p("task")))
        self.seed = int(p("seed"))
        self.env = self.task.make_env(seed=self.seed, randomisation=self._randomisation(),
                                      episode_steps=int(p("max_episode_steps")))
        model = self.env.unwrapped.model
        self._qpos = [int(model.joint(n).qposadr[0]) for n in self.task.joint_names]
        self._qvel = [int(model.joint(n).dofadr[0]) for n in self.task.joint_names]
        self.dt = float(self.env.unwrapped.dt)
        self.finished = False
        # the last RESULTS_KEPT episodes (bounded: a soak at 500 Hz ends 10 Reacher episodes/s)
        self.results: deque[dict[str, float]] = deque(maxlen=RESULTS_KEPT)
        self.episode, self.steps, self.sim_steps, self.resends = 0, 0, 0, 0
        self.episode_return = 0.0
        self._obs: np.ndarray | None = None
        self._sent_at = 0.0
        self._awaiting = False          # an observation is out and unanswered (lockstep)
        self._resetting = False
        self._command: np.ndarray | None = None
        self._command_t = 0.0
        self.rejected_commands, self.command_timeouts = 0, 0
        self._timed_out = False
        self._zero = np.zeros(self.task.action_dim, dtype=self.env.action_space.dtype)

        self.obs_pub = self.create_publisher(Float64MultiArray, "observation", SENSOR_OUT)
        self.js_pub = self.create_publisher(JointState, "joint_states", SENSOR_OUT)
        self.reward_pub = self.create_publisher(Float64, "reward", RELIABLE)
        self.goal_pub = self.create_publisher(Float64MultiArray, "goal", LATCHED)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.stats_pub = self.create_publisher(Float64MultiArray, "episode_stats", RELIABLE)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        cmd_type = JointState if p("command_type") == "joint_state" else Float64MultiArray
        self.create_subscription(cmd_type, "commands", self._on_command, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE))
        srv = str(p("policy_reset_service"))
        self._reset_client: Any = self.create_client(Trigger, srv) if srv else None
        self._reset_deadline = 0.0
        self.create_timer(1.0, self._publish_diagnostics)
        rate = float(p("control_rate_hz")) or 1.0 / self.dt
        if self.mode == "realtime":
            self.create_timer(1.0 / rate, self._on_realtime_tick)
        self.create_timer(0.02, self._on_supervise)
        self._start_wait_deadline = time.monotonic() + float(p("start_wait_s"))
        self._waiting_for_subscribers = int(p("start_subscribers")) > 0
        if not self._waiting_for_subscribers:
            self._begin_episode()
        self.get_logger().info(f"{self.task.name} ({self.task.env_id}) mode={self.mode} dt={self.dt} s "
                               f"seed={self.seed} episodes={p('episodes') or 'inf'}")

    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def destroy_node(self) -> None:
        self.env.close()
        super().destroy_node()

    def _randomisation(self) -> Any:
        if not self.p("randomise"):
            return None
        from mtm_runtime.sim.randomisation import Randomisation

        return Randomisation(mass_scale=_scale(self.p("mass_scale")), friction_scale=_scale(self.p("friction_scale")),
                             actuator_gain_scale=_scale(self.p("actuator_gain_scale")),
                             obs_noise_std=float(self.p("obs_noise_std")),
                             action_latency_steps=int(self.p("action_latency_steps")))

    # ---- episodes --------------------------------------------------------------------------
    def _begin_episode(self) -> None:
        """Reset the env and publish the episode's goal, then ask the policy node for a new
        episode; the first observation goes out when it answers (or the request times out).
        The goal leaves before the reset request, so it reaches the policy before the first
        state of the episode (they travel on different topics, which DDS does not order)."""
        self._resetting, self._awaiting = True, False
        obs, _info = self.env.reset(seed=self.seed + self.episode)
        self.steps, self.episode_return, self._command = 0, 0.0, None
        self._first_obs = obs
        parts = self.task.split_observation(obs)
        if "goals" in parts:
            self.goal_pub.publish(conv.array_to_multiarray(parts["goals"], "goal"))
        # the first episode waits for the policy node to come up (loading a model takes seconds)
        wait = self.p("start_wait_s") if self.episode == 0 else self.p("reset_timeout_s")
        self._reset_deadline = time.monotonic() + float(wait)
        self._reset_future: Any = None
        self._try_reset_call()

    def _try_reset_call(self) -> None:
        if self._reset_client is None:
            self._start_episode()
        elif self._reset_future is None and self._reset_client.service_is_ready():
            self._reset_future = self._reset_client.call_async(Trigger.Request())
            self._reset_future.add_done_callback(self._on_reset_answer)

    def _on_reset_answer(self, future: Any) -> None:
        result = future.result()
        if result is not None and not result.success and self.mode == "lockstep":
            # lockstep starts only against an active policy (retried by the supervisor until the deadline)
            self.get_logger().info(f"policy not ready for a new episode: {result.message}", throttle_duration_sec=1.0)
            self._reset_future = None
            return
        self._start_episode()

    def _start_episode(self) -> None:
        if not self._resetting:
            return
        self._resetting = False
        self._send(self._first_obs, reward=None)

    def _end_episode(self) -> None:
        try:
            score = float(self.task.normalised_score(self.episode_return))
        except (RuntimeError, KeyError):
            score = math.nan
        ok = self.task.success(self.env)  # None for tasks without a success criterion
        success = math.nan if ok is None else float(ok)
        row = {"episode": self.episode, "seed": self.seed + self.episode, "return": self.episode_return,
               "normalised_score": score, "steps": self.steps, "success": success}
        self.results.append(row)
        self.get_logger().info(f"episode {self.episode}: return {self.episode_return:.3f} "
                               f"normalised score {score:.1f} in {self.steps} steps")
        self.stats_pub.publish(conv.array_to_multiarray(np.array([self.episode, self.episode_return, score, self.steps, success]),
                                                        "episode,return,normalised_score,steps,success"))
        path = str(self.p("results_path"))
        if path:
            Path(path).write_text(json.dumps({"task": self.task.name, "mode": self.mode, "lockstep_resends": self.resends,
                                              "episodes": list(self.results)},
                                             indent=1))
        self.episode += 1
        n = int(self.p("episodes"))
        if n and self.episode >= n:
            self.finished = True
            self._awaiting = False
            return
        self._begin_episode()

    # ---- stepping --------------------------------------------------------------------------
    def _send(self, obs: np.ndarray, reward: float | None) -> None:
        """Publish reward (acknowledged first), then observation/joint states/clock."""
        if reward is not None:
            self.reward_pub.publish(Float64(data=float(reward)))
        self._obs = np.asarray(obs, dtype=np.float64)
        sim_stamp = conv.ns_to_stamp(int(round(self.sim_steps * self.dt * 1e9)))
        stamp = self.get_clock().now().to_msg() if self.p("stamp_clock") == "ros" else sim_stamp
        if self.p("publish_joint_states"):
            data = self.env.unwrapped.data
            self.js_pub.publish(conv.joint_state_from_arrays(self.task.joint_names, data.qpos[self._qpos],
                                                             data.qvel[self._qvel], stamp))
        self._publish_obs()
        self.clock_pub.publish(Clock(clock=sim_stamp))  # after the state: off the state->command path

    def _publish_obs(self) -> None:
        if self.p("publish_observation") and self._obs is not None:
            self.obs_pub.publish(conv.array_to_multiarray(self.task.split_observation(self._obs)["states"]))
        self._sent_at = time.monotonic()
        self._awaiting = True

    def _step(self, action: np.ndarray) -> None:
        obs, reward, terminated, truncated, _info = self.env.step(action)
        self.steps += 1
        self.sim_steps += 1
        self.episode_return += float(reward)
        self._awaiting = False
        if terminated or truncated:
            self._end_episode()
        else:
            self._send(obs, float(reward))

    def _on_command(self, msg: Any) -> None:
        a = conv.multiarray_to_array(msg) if isinstance(msg, Float64MultiArray) else np.asarray(msg.effort)
        if a.shape != (self.task.action_dim,) or not np.all(np.isfinite(a)):
            self.rejected_commands += 1
            self.get_logger().warning(f"ignored command of shape {a.shape} (or non-finite)", throttle_duration_sec=1.0)
            return
        self._command = a.astype(self.env.action_space.dtype)  # the env's declared action type
        self._command_t = time.monotonic()
        self._timed_out = False
        if self.mode == "lockstep" and self._awaiting and not self._resetting and not self.finished:
            self._step(self._command)

    def _on_realtime_tick(self) -> None:
        if self._resetting or self.finished or self._waiting_for_subscribers:
            return
        timeout = float(self.p("command_timeout_s"))
        if self._command is not None and timeout > 0 and time.monotonic() - self._command_t > timeout:
            if not self._timed_out:
                self._timed_out = True
                self.command_timeouts += 1
                self.get_logger().warning(f"no command for {timeout} s: applying zeros")
            self._command = None
        self._step(self._zero if self._command is None else self._command)

    def _subscribers_ready(self, now: float) -> bool:
        """``start_subscribers`` readers matched on 'observation' (a recorder started with the loop
        then misses no message of the first episode), or ``start_wait_s`` passed (warned)."""
        need, have = int(self.p("start_subscribers")), self.obs_pub.get_subscription_count()
        if have >= need:
            return True
        if now > self._start_wait_deadline:
            self.get_logger().warning(f"only {have} of {need} subscribers on 'observation' after "
                                      f"{self.p('start_wait_s')} s: starting anyway (a recorder may miss the start)")
            return True
        return False

    def _on_supervise(self) -> None:
        """Start the first episode once its subscribers are there; finish a pending reset (service
        appeared / timed out); resend unanswered lockstep observations."""
        now = time.monotonic()
        if self._waiting_for_subscribers:
            if self._subscribers_ready(now):
                self._waiting_for_subscribers = False
                self._begin_episode()
            return
        if self._resetting:
            self._try_reset_call()
            if self._resetting and now > self._reset_deadline:
                self.get_logger().warning(f"policy reset service {self.p('policy_reset_service')} did not answer "
                                          f"within {'start_wait_s' if self.episode == 0 else 'reset_timeout_s'}; "
                                          f"starting episode {self.episode} anyway")
                self._start_episode()
        elif (self.mode == "lockstep" and self._awaiting and not self.finished
              and now - self._sent_at > float(self.p("lockstep_resend_s"))):
            self.resends += 1
            self._publish_obs()

    def _publish_diagnostics(self) -> None:
        last = self.results[-1] if self.results else {}
        vals = {"task": self.task.name, "mode": self.mode, "episode": self.episode, "step": self.steps,
                "sim_time_s": self.sim_steps * self.dt, "lockstep_resends": self.resends,
                "last_return": last.get("return", math.nan), "last_normalised_score": last.get("normalised_score", math.nan),
                "rejected_commands": self.rejected_commands, "command_timeouts": self.command_timeouts,
                "fault": "no_command" if self._timed_out else "none"}
        level = DiagnosticStatus.WARN if self._timed_out else DiagnosticStatus.OK
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [conv.diagnostic_status(f"{self.get_name()}: sim", level,
                                             "finished" if self.finished else
                                             "waiting for subscribers" if self._waiting_for_subscribers else
                                             ("no command: zeros applied" if self._timed_out else "running"), vals)]
        self.diag_pub.publish(arr)


def main(argv: list[str] | None = None) -> int:
    """Entry point ``mtm_sim_bridge``; exits 0 after ``episodes`` episodes (if > 0) or on any
    number of SIGINT/SIGTERM."""
    return run_node(lambda context: SimBridge(context=context), sys.argv if argv is None else argv,
                    finished=lambda node: node.finished)


if __name__ == "__main__":
    sys.exit(main())
