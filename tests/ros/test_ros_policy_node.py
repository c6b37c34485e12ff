"""Policy node over real rclpy + Fast DDS (in-process, own Context per test): lifecycle,
parameters, and each safety behaviour observed from a separate subscriber."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mtm_runtime.ros_nodes.policy_node import PolicyNode  # noqa: E402
from ros_harness import Graph, Parameter, ScriptedPolicy, obs  # noqa: E402

pytestmark = pytest.mark.ros
NODE = "mtm_policy"
RELIABLE_OUT = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def graph(ros_env):
    g = Graph()
    yield g
    g.__exit__(None, None, None)


def _make(graph: Graph, policy: ScriptedPolicy, **params: object) -> PolicyNode:
    overrides = {"model_path": "scripted", "control_rate_hz": 50.0, "stale_timeout": 0.3, "warmup_iters": 0}
    overrides.update(params)
    node = PolicyNode(NODE, context=graph.context, policy_loader=lambda p, b, m: policy,
                      parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    graph.add(node)
    graph.listen_commands(JointState if params.get("command_type") == "joint_state" else Float64MultiArray)
    return node


def _publish_until_commanded(graph: Graph, pub) -> None:
    """Publish a state every 20 ms until the first command comes back (discovery may lose the first)."""
    for _ in range(50):
        pub.publish(obs([0.1, 0.2, 0.3]))
        if graph.commands:
            break
        time.sleep(0.02)
    graph.wait_for(lambda: len(graph.commands) >= 1, what="a command")


def _activate(graph: Graph) -> None:
    assert graph.change_state(NODE, Transition.TRANSITION_CONFIGURE)
    assert graph.change_state(NODE, Transition.TRANSITION_ACTIVATE)


def test_lifecycle_transitions_and_reset_service(graph: Graph) -> None:
    policy = ScriptedPolicy()
    node = _make(graph, policy)
    graph.start()
    assert graph.get_state(NODE) == "unconfigured"
    assert not graph.reset(NODE).success  # nothing to reset before configure
    assert graph.change_state(NODE, Transition.TRANSITION_CONFIGURE)
    assert graph.get_state(NODE) == "inactive"
    pub = graph.publisher(Float64MultiArray, "observation")
    pub.publish(obs([0.1, 0.2, 0.3]))
    time.sleep(0.2)
    assert policy.calls == []  # inactive: states are ignored
    assert graph.change_state(NODE, Transition.TRANSITION_ACTIVATE)
    assert graph.get_state(NODE) == "active"
    graph.wait_for(lambda: node.get_subscriptions_info_by_topic("/observation"), what="subscription")
    _publish_until_commanded(graph, pub)
    np.testing.assert_allclose(graph.command_values()[0], [0.1, 0.2], rtol=1e-6)
    before = policy.resets
    assert graph.reset(NODE).success and policy.resets == before + 1
    assert graph.change_state(NODE, Transition.TRANSITION_DEACTIVATE)
    assert graph.change_state(NODE, Transition.TRANSITION_CLEANUP)
    assert graph.get_state(NODE) == "unconfigured" and node.policy is None


def test_configure_failure_stays_unconfigured_with_reason(graph: Graph) -> None:
    _make(graph, ScriptedPolicy(state_width=3), state_width=5)
    graph.start()
    assert not graph.change_state(NODE, Transition.TRANSITION_CONFIGURE)
    assert graph.get_state(NODE) == "unconfigured"
    graph.wait_for(lambda: any("state_width is 5" in d["_message"] for d in graph.diagnostics), 3.0,
                   "the configure failure in /diagnostics")


def test_parameters_validated_at_run_time(graph: Graph) -> None:
    policy = ScriptedPolicy()
    node = _make(graph, policy)
    graph.start()
    _activate(graph)
    r = graph.set_param(NODE, "mask_mode", "teleport")
    assert not r.successful and "teleport" in r.reason
    assert node.get_parameter("mask_mode").value == "bc" and policy.mode == "bc"
    r = graph.set_param(NODE, "target_return", 42.0)
    assert r.successful and policy.target_return == 42.0
    r = graph.set_param(NODE, "mask_mode", "rcbc")
    assert r.successful and policy.mode == "rcbc"
    r = graph.set_param(NODE, "control_rate_hz", 100.0)  # static while configured
    assert not r.successful and "configure" in r.reason
    r = graph.set_param(NODE, "goal", [1.0, 2.0])  # the model has no goals: refused, old kept
    assert not r.successful and "goal" in r.reason and list(node.get_parameter("goal").value) == []


def test_limits_rate_limit_nan_and_wrong_size(graph: Graph) -> None:
    policy = ScriptedPolicy(bound=1.0, gain=10.0)
    node = _make(graph, policy, action_low=[-0.5, -0.2], action_high=[0.5, 0.3], max_rate=0.1)
    graph.start()
    _activate(graph)
    pub = graph.publisher(Float64MultiArray, "observation")
    graph.wait_for(lambda: graph.probe.count_subscribers("/observation") > 0, what="match")
    for _ in range(12):
        pub.publish(obs([1.0, 1.0, 0.0]))
        time.sleep(0.03)
    graph.wait_for(lambda: len(graph.commands) >= 8, what="commands")
    cmds = np.array(graph.command_values())
    assert np.all(cmds <= [0.5 + 1e-6, 0.3 + 1e-6]) and np.all(cmds >= [-0.5 - 1e-6, -0.2 - 1e-6])
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= 0.1 + 1e-6)
    np.testing.assert_allclose(cmds[0], [0.1, 0.1], atol=1e-6)  # first step limited from... nothing: 1.0 -> clip
    np.testing.assert_allclose(cmds[-1], [0.5, 0.3], atol=1e-6)
    n_calls, n_cmds = len(policy.calls), len(graph.commands)
    pub.publish(obs([float("nan"), 0.0, 0.0]))
    pub.publish(obs([0.1, 0.2]))
    graph.wait_for(lambda: node.stats.rejected_inputs == 2, what="two rejections")
    time.sleep(0.05)
    assert len(policy.calls) == n_calls  # never reached the policy's buffer
    assert len(graph.commands) == n_cmds


def test_stale_input_fault_then_recovery(graph: Graph) -> None:
    policy = ScriptedPolicy()
    node = _make(graph, policy, fault_action="safe", safe_action=[0.0, -0.25], stale_timeout=0.2, stale_reset_s=0.5)
    graph.start()
    _activate(graph)
    pub = graph.publisher(Float64MultiArray, "observation")
    graph.wait_for(lambda: graph.probe.count_subscribers("/observation") > 0, what="match")

    def stream(n: int) -> None:
        for _ in range(n):
            pub.publish(obs([0.4, 0.3, 0.0]))
            time.sleep(0.02)

    stream(10)
    # trigger: state with fresh input: the control-rate timer idles (no wake-up per period) ...
    assert node._control.timer.is_canceled()
    resets_before = policy.resets
    graph.clear()
    t_last_state = time.monotonic()
    time.sleep(0.8)  # silence: stale after 0.2 s, gap 0.8 s > stale_reset_s
    faults = graph.command_values()
    assert len(faults) >= 10 and all(np.allclose(c, [0.0, -0.25]) for c in faults)
    # ... and is back in time: the first fault action within stale_timeout + 1 period (+ 50 ms
    # for scheduling on a loaded test machine; the idle timer's own margin is 2 periods)
    first_fault_s = graph.commands[0][0] - t_last_state
    assert first_fault_s <= 0.2 + 1 / 50.0 + 0.05, f"first fault action {first_fault_s:.3f} s after the last state"
    assert not node._control.timer.is_canceled()
    assert node.stats.stale_ticks >= 10 and "stale input" in node.stats.last_fault_reason
    graph.clear()
    stream(5)
    graph.wait_for(lambda: len(graph.commands) >= 3, what="recovered commands")
    np.testing.assert_allclose(graph.command_values()[-1], [0.4, 0.3], rtol=1e-6)
    assert policy.resets == resets_before + 1  # long gap -> new episode
    assert policy.calls[-5][1] is None  # first act of the new episode gets no reward
    graph.wait_for(lambda: any(d.get("stale_ticks", "0") != "0" for d in graph.diagnostics), 2.5, "diagnostics")


def test_overrun_and_act_error_answered_with_fault(graph: Graph) -> None:
    policy = ScriptedPolicy()
    node = _make(graph, policy, fault_action="zeros", control_rate_hz=50.0, stale_timeout=1.0)
    graph.start()
    _activate(graph)
    pub = graph.publisher(Float64MultiArray, "observation")
    graph.wait_for(lambda: graph.probe.count_subscribers("/observation") > 0, what="match")
    pub.publish(obs([0.4, 0.3, 0.0]))
    graph.wait_for(lambda: len(graph.commands) == 1, what="first command")
    policy.delay_s = 0.04  # > 20 ms period
    pub.publish(obs([0.4, 0.3, 0.0]))
    graph.wait_for(lambda: len(graph.commands) == 2, what="overrun answer")
    np.testing.assert_allclose(graph.command_values()[-1], [0.0, 0.0])
    assert node.stats.overruns == 1 and "overrun" in node.stats.last_fault_reason
    policy.delay_s, policy.fail = 0.0, True
    pub.publish(obs([0.4, 0.3, 0.0]))
    graph.wait_for(lambda: len(graph.commands) == 3, what="act error answer")
    np.testing.assert_allclose(graph.command_values()[-1], [0.0, 0.0])
    assert node.stats.act_errors == 1 and "scripted failure" in node.stats.last_fault_reason


def test_joint_state_io_timer_trigger_and_stamp(graph: Graph) -> None:
    policy = ScriptedPolicy(state_width=4, action_width=2)
    _make(graph, policy, input_type="joint_state", joint_names=["b", "a"], command_type="joint_state",
          trigger="timer", control_rate_hz=100.0)
    graph.start()
    _activate(graph)
    pub = graph.publisher(JointState, "joint_states")
    graph.wait_for(lambda: graph.probe.count_subscribers("/joint_states") > 0, what="match")
    msg = JointState(name=["a", "b"], position=[0.1, 0.2], velocity=[0.3, 0.4])
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345
    pub.publish(msg)
    graph.wait_for(lambda: len(graph.commands) >= 1, what="joint state command")
    cmd = graph.commands[0][1]
    assert list(cmd.name) == ["b", "a"] and (cmd.header.stamp.sec, cmd.header.stamp.nanosec) == (12, 345)
    np.testing.assert_allclose(cmd.effort, [0.2, 0.1])  # state = [pos b, pos a, vel b, vel a]
    time.sleep(0.1)
    assert len(policy.calls) == 1  # timer trigger: no new state, no new step


def test_real_policy_with_slow_backend_overruns(graph: Graph, tmp_path) -> None:
    """A real Policy whose backend (public Backend interface) is slow: overrun -> fault action."""
    from ros_harness import make_tiny_checkpoint

    from mtm_runtime.backends import Backend, backend_class
    from mtm_runtime.checkpoint import load_checkpoint
    from mtm_runtime.policy import Policy

    class SlowBackend(Backend):
        name = "slow-torch"

        def __init__(self, inner: Backend) -> None:
            super().__init__(inner.spec, inner.batch_size)
            self.inner, self.delay_s = inner, 0.0

        def run(self, x, mask):
            time.sleep(self.delay_s)
            return self.inner.run(x, mask)

    ckpt = load_checkpoint(make_tiny_checkpoint(tmp_path / "ckpt"))
    backend = SlowBackend(backend_class("torch")(ckpt.build_model(), warmup=1))
    policy = Policy(ckpt.spec, ckpt.normaliser, backend, ckpt.action_limits, "bc")
    node = _make(graph, policy, fault_action="zeros", control_rate_hz=50.0, stale_timeout=1.0,
                 state_width=ckpt.spec.width("states"))
    graph.start()
    _activate(graph)
    pub = graph.publisher(Float64MultiArray, "observation")
    graph.wait_for(lambda: graph.probe.count_subscribers("/observation") > 0, what="match")
    state = obs(np.linspace(-0.5, 0.5, ckpt.spec.width("states")))
    for i in range(3):
        pub.publish(state)
        graph.wait_for(lambda: len(graph.commands) == i + 1, what="command")
    normal = graph.command_values()
    assert all(ckpt.action_limits.contains(c) for c in normal) and node.stats.overruns == 0
    backend.delay_s = 0.05  # 50 ms > 20 ms period
    pub.publish(state)
    graph.wait_for(lambda: len(graph.commands) == 4, what="overrun answer")
    np.testing.assert_allclose(graph.command_values()[-1], [0.0, 0.0])
    assert node.stats.overruns == 1
    vals = node.diagnostics_values()
    assert vals["backend"] == "slow-torch" and float(vals["act_max_ms"]) >= 50.0


def test_atomic_parameter_set_is_checked_as_a_whole(graph: Graph, tmp_path) -> None:
    """``~/set_parameters_atomically`` with one bad value refuses the set and changes nothing:
    not the parameters, not the live policy (it stays in bc); a good set is applied as a whole."""
    from rcl_interfaces.srv import SetParametersAtomically
    from ros_harness import make_tiny_checkpoint

    from mtm_runtime.policy import Policy

    policy = Policy.load(make_tiny_checkpoint(tmp_path / "ckpt"))  # reacher: returns and 2-d goals
    node = _make(graph, policy, state_width=policy.spec.width("states"))
    graph.start()
    _activate(graph)

    def atomically(**values: object):
        req = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return graph.call(SetParametersAtomically, f"/{NODE}/set_parameters_atomically", req).result

    refusals = node.param_refusals
    r = atomically(mask_mode="rcbc", goal=[0.1, 0.2, 0.3])  # the goal has the wrong width
    assert not r.successful and "goal" in r.reason
    assert policy.mode == "bc" and node.get_parameter("mask_mode").value == "bc"
    assert list(node.get_parameter("goal").value) == [] and node.param_refusals == refusals + 1
    r = atomically(mask_mode="goal", goal=[0.1, 0.2])
    assert r.successful and policy.mode == "goal" and node.get_parameter("mask_mode").value == "goal"
    r = atomically(mask_mode="rcbc", target_return=7.0)
    assert r.successful and policy.mode == "rcbc" and node.get_parameter("target_return").value == 7.0
    r = atomically(mask_mode="bc", control_rate_hz=10.0)  # a static parameter while configured
    assert not r.successful and "configure" in r.reason and policy.mode == "rcbc"


@pytest.mark.parametrize("state_qos, reliability", [("sensor_data", "BEST_EFFORT"), ("reliable", "RELIABLE")])
def test_state_qos_sets_the_state_subscription(graph: Graph, state_qos: str, reliability: str) -> None:
    """``state_qos: reliable`` (what a lockstep simulator needs) gives a reliable keep-last-1 state
    subscription; states are counted (``states_in``) and the matched publishers are reported."""
    node = _make(graph, ScriptedPolicy(), state_qos=state_qos)
    graph.start()
    _activate(graph)
    (info,) = node.get_subscriptions_info_by_topic("/observation")
    assert info.qos_profile.reliability.name == reliability
    pub = graph.publisher(Float64MultiArray, "observation", RELIABLE_OUT)  # matches either
    graph.wait_for(lambda: node.diagnostics_values()["state_publishers"] == 1, what="the publisher matched")
    _publish_until_commanded(graph, pub)
    assert node.diagnostics_values()["states_in"] >= 1


def test_cpu_wake_latency_is_held_while_active(graph: Graph, tmp_path) -> None:
    """``cpu_wake_latency_us >= 0`` holds a PM QoS request (mtm_runtime/cpu_latency.py) from activation
    to deactivation and reports it in /diagnostics; commands flow as without it."""
    node = _make(graph, ScriptedPolicy(), cpu_wake_latency_us=0)
    device = tmp_path / "cpu_dma_latency"   # a plain file stands in for the device: what is written is checked
    device.write_bytes(b"")
    node._wake_request.device = str(device)
    graph.start()
    assert node.diagnostics_values()["cpu_wake_latency"] == "off"
    _activate(graph)
    assert node.diagnostics_values()["cpu_wake_latency"] == "held: 0 us"
    assert device.read_bytes() == (0).to_bytes(4, "little", signed=True)
    _publish_until_commanded(graph, graph.publisher(Float64MultiArray, "observation"))
    assert graph.change_state(NODE, Transition.TRANSITION_DEACTIVATE)
    assert node.diagnostics_values()["cpu_wake_latency"] == "off" and not node._wake_request.held


def test_cpu_wake_latency_without_access_warns_and_runs(graph: Graph, tmp_path) -> None:
    node = _make(graph, ScriptedPolicy(), cpu_wake_latency_us=10)
    node._wake_request.device = str(tmp_path / "no_such_device")
    graph.start()
    _activate(graph)
    assert node.diagnostics_values()["cpu_wake_latency"].startswith("not held: ")
    _publish_until_commanded(graph, graph.publisher(Float64MultiArray, "observation"))
