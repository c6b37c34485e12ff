"""The policy node configured from a robot file (``robot_file``) over real rclpy + Fast DDS: the
file's joints, fields, command type, interface, topic, rate and limits; a one-point JointTrajectory
for a trajectory controller; and refusals that name the joint."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dataset_writers import ARM_JOINTS, write_arm_robot  # noqa: E402
from fault_helpers import tiny_checkpoint  # noqa: E402
from mtm_runtime.robot import load_robot  # noqa: E402
from mtm_runtime.ros_nodes.policy_node import PolicyNode  # noqa: E402
from ros_harness import Graph, Parameter  # noqa: E402

pytestmark = pytest.mark.ros
NODE = "mtm_policy"
TOPIC = "/joint_trajectory_controller/joint_trajectory"


@pytest.fixture
def graph(ros_env):
    g = Graph()
    yield g
    g.__exit__(None, None, None)


@pytest.fixture
def arm(tmp_path: Path) -> tuple[Path, Path]:
    robot = write_arm_robot(tmp_path / "arm.yaml", rate=40.0, topic=TOPIC, type="JointTrajectory")
    model = tiny_checkpoint(tmp_path / "model", states=14, actions=7, bound=3.0,
                            provenance={"robot": load_robot(robot).to_dict()})
    return robot, model


def _node(graph: Graph, model: Path, **params: object) -> PolicyNode:
    overrides = {"model_path": str(model), "warmup_iters": 0, "stale_timeout": 1.0, **params}
    node = PolicyNode(NODE, context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    graph.add(node)
    return node


def test_robot_file_sets_the_interface_and_a_trajectory_goes_out(graph: Graph, arm) -> None:
    robot, model = arm
    node = _node(graph, model, robot_file=str(robot))
    graph.listen_commands(JointTrajectory, TOPIC)
    graph.start()
    assert graph.change_state(NODE, Transition.TRANSITION_CONFIGURE), node._config_error
    assert graph.change_state(NODE, Transition.TRANSITION_ACTIVATE)
    assert node.loop.config.rate_hz == 40.0
    np.testing.assert_allclose(node.loop.limits.high, [2.0] * 7)   # the file's limits narrow the model's (3.0)
    pub = graph.publisher(JointState, "joint_states")
    order = [6, 2, 0, 4, 1, 5, 3]
    names = [ARM_JOINTS[i] for i in order] + ["gripper"]
    for _ in range(60):
        msg = JointState(name=names, position=[0.1 * i for i in order] + [0.0], velocity=[0.0] * 8, effort=[0.0] * 8)
        msg.header.stamp = graph.probe.get_clock().now().to_msg()
        pub.publish(msg)
        if graph.commands:
            break
        time.sleep(0.05)
    graph.wait_for(lambda: len(graph.commands) >= 1, what="a trajectory command")
    traj = graph.commands[0][1]
    assert list(traj.joint_names) == list(ARM_JOINTS) and len(traj.points) == 1
    p = traj.points[0]
    assert len(p.positions) == 7 and not p.velocities and np.all(np.abs(p.positions) <= 2.0)
    assert p.time_from_start.nanosec == 25_000_000                  # one control period at 40 Hz


def test_parameters_that_contradict_the_robot_file_are_refused(graph: Graph, arm, tmp_path: Path) -> None:
    robot, model = arm
    swapped = [ARM_JOINTS[1], ARM_JOINTS[0], *ARM_JOINTS[2:]]
    node = _node(graph, model, robot_file=str(robot), joint_names=swapped)
    graph.start()
    assert not graph.change_state(NODE, Transition.TRANSITION_CONFIGURE)
    assert "joint 0 is 'arm_joint_2', robot 'synthetic_arm7' has 'arm_joint_1' there" in node._config_error


def test_a_robot_whose_joints_are_not_the_models_is_refused(graph: Graph, arm, tmp_path: Path) -> None:
    _, model = arm
    other = write_arm_robot(tmp_path / "other.yaml", joints=(*ARM_JOINTS[:6], "wrist_3"))
    node = _node(graph, model, robot_file=str(other))
    graph.start()
    assert not graph.change_state(NODE, Transition.TRANSITION_CONFIGURE)
    assert "joint 6 is 'wrist_3', robot 'synthetic_arm7' has 'arm_joint_7' there" in node._config_error
