"""MuJoCo sim bridge over real rclpy + Fast DDS: lockstep determinism against the in-process
rollout, realtime stepping, randomisation parameters."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

from ros_harness import Graph, Parameter, ScriptedPolicy  # noqa: E402

from mtm_runtime.ros_nodes.policy_node import PolicyNode  # noqa: E402
from mtm_runtime.ros_nodes.sim_bridge import SimBridge  # noqa: E402
from mtm_runtime.sim.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.ros


def in_process_returns(policy, task_name: str, seed: int, episodes: int) -> list[float]:
    """The reference: the same policy and env, no ROS (reward since the previous act, None first)."""
    task = get_task(task_name)
    env = task.make_env(seed=seed)
    out = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        policy.reset()
        total, reward, done = 0.0, None, False
        while not done:
            a = policy.act(task.split_observation(obs)["states"].astype(np.float32), reward=reward)
            obs, reward, term, trunc, _ = env.step(a)
            total += float(reward)
            done = term or trunc
        out.append(total)
    env.close()
    return out


def _graph_with_policy(g: Graph, policy, **params) -> PolicyNode:
    base = {"model_path": "scripted", "warmup_iters": 0, "control_rate_hz": 20.0, "stale_timeout": 5.0,
            "autostart": True}
    base.update(params)
    return g.add(PolicyNode(context=g.context, policy_loader=lambda p, b, m: policy,
                            parameter_overrides=[Parameter(k, value=v) for k, v in base.items()]))


def test_lockstep_reproduces_in_process_rollout(ros_env) -> None:
    task, seed, episodes = get_task("reacher"), 7, 2
    with Graph() as g:
        policy = ScriptedPolicy(state_width=task.state_dim, action_width=task.action_dim, gain=0.8)
        node = _graph_with_policy(g, policy)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("task", value="reacher"), Parameter("mode", value="lockstep"),
            Parameter("seed", value=seed), Parameter("episodes", value=episodes)]))
        g.start()
        g.wait_for(lambda: bridge.finished, timeout=60.0, what="two lockstep episodes")
        ros_returns = [r["return"] for r in bridge.results]
        assert [r["steps"] for r in bridge.results] == [task.episode_steps] * episodes
        assert all(r["success"] in (0.0, 1.0) for r in bridge.results)  # Reacher has a success criterion
        assert node.stats.faults == 0 and node.stats.ticks == task.episode_steps * episodes
    reference = in_process_returns(ScriptedPolicy(task.state_dim, task.action_dim, gain=0.8), "reacher", seed, episodes)
    assert ros_returns == pytest.approx(reference, abs=1e-9), (ros_returns, reference)
    assert abs(ros_returns[0] - ros_returns[1]) > 1e-6  # different seeds, different episodes


def test_realtime_steps_against_wall_clock_with_randomisation(ros_env) -> None:
    with Graph() as g:
        policy = ScriptedPolicy(state_width=8, action_width=2)
        _graph_with_policy(g, policy, control_rate_hz=100.0, stale_timeout=0.5)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("mode", value="realtime"), Parameter("control_rate_hz", value=100.0),
            Parameter("episodes", value=1), Parameter("randomise", value=True),
            Parameter("mass_scale", value=[0.8, 1.2]), Parameter("obs_noise_std", value=0.01)]))
        assert bridge.env.randomisation.mass_scale == (0.8, 1.2)
        g.start()
        g.wait_for(lambda: bridge.finished, timeout=20.0, what="one realtime episode")
        assert bridge.results[0]["steps"] == 50 and len(policy.calls) >= 40


def test_max_episode_steps_overrides_the_task_length(ros_env) -> None:
    task = get_task("reacher")
    with Graph() as g:
        policy = ScriptedPolicy(state_width=task.state_dim, action_width=task.action_dim)
        node = _graph_with_policy(g, policy)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("mode", value="lockstep"), Parameter("episodes", value=2),
            Parameter("max_episode_steps", value=7)]))
        g.start()
        g.wait_for(lambda: bridge.finished, timeout=30.0, what="two 7-step episodes")
        assert [r["steps"] for r in bridge.results] == [7, 7] and node.stats.ticks == 14
    with pytest.raises(ValueError, match="episode_steps must be >= 1"):
        task.make_env(episode_steps=-3)


def test_first_episode_waits_for_its_subscribers(ros_env) -> None:
    """``start_subscribers``: no state leaves before that many readers are matched on 'observation'
    (a recorder started with the loop holds every step); after ``start_wait_s`` it starts anyway."""
    import time

    from std_msgs.msg import Float64MultiArray

    task = get_task("reacher")
    with Graph() as g:
        policy = ScriptedPolicy(state_width=task.state_dim, action_width=task.action_dim)
        node = _graph_with_policy(g, policy)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("mode", value="lockstep"), Parameter("episodes", value=1), Parameter("max_episode_steps", value=5),
            Parameter("start_subscribers", value=2), Parameter("start_wait_s", value=60.0)]))
        g.start()
        g.wait_for(lambda: bridge.obs_pub.get_subscription_count() >= 1, timeout=20.0, what="the policy's subscription")
        time.sleep(1.0)
        assert node.stats.ticks == 0 and bridge.steps == 0 and bridge._waiting_for_subscribers   # one reader: waiting
        seen: list[int] = []
        g.probe.create_subscription(Float64MultiArray, "observation", lambda m: seen.append(1), 10)  # the second
        g.wait_for(lambda: bridge.finished and len(seen) >= 5, timeout=30.0, what="the episode after the second subscriber")
        assert len(seen) == 5 and node.stats.ticks == 5                 # the late reader got every state
    with Graph() as g:
        policy = ScriptedPolicy(state_width=task.state_dim, action_width=task.action_dim)
        _graph_with_policy(g, policy)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("mode", value="lockstep"), Parameter("episodes", value=1), Parameter("max_episode_steps", value=5),
            Parameter("start_subscribers", value=3), Parameter("start_wait_s", value=1.0)]))
        g.start()
        g.wait_for(lambda: bridge.finished, timeout=30.0, what="the episode after start_wait_s")
        assert bridge.results[0]["steps"] == 5


def test_bridge_serves_any_gymnasium_mujoco_id(ros_env) -> None:
    """Not a benchmark task: Swimmer-v5 behind the same topics, lockstep equal to in-process."""
    task, seed = get_task("Swimmer-v5"), 3
    with Graph() as g:
        policy = ScriptedPolicy(state_width=task.state_dim, action_width=task.action_dim, gain=0.3)
        node = _graph_with_policy(g, policy)
        bridge = g.add(SimBridge(context=g.context, parameter_overrides=[
            Parameter("task", value="Swimmer-v5"), Parameter("mode", value="lockstep"),
            Parameter("seed", value=seed), Parameter("episodes", value=1), Parameter("max_episode_steps", value=40)]))
        g.start()
        g.wait_for(lambda: bridge.finished, timeout=60.0, what="one Swimmer episode")
        assert [r["steps"] for r in bridge.results] == [40] and node.stats.faults == 0
        assert np.isnan(bridge.results[0]["normalised_score"])     # no reference returns for this env
        env = task.make_env(seed=seed, episode_steps=40)
        obs, _ = env.reset(seed=seed)
        policy.reset()
        total, reward, done = 0.0, None, False
        while not done:
            obs, reward, term, trunc, _ = env.step(policy.act(obs.astype(np.float32), reward=reward))
            total, done = total + float(reward), term or trunc
        np.testing.assert_allclose(bridge.results[0]["return"], total, rtol=1e-6)
