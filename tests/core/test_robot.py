"""The robot description (mtm_runtime/robot.py): validation names the key, limits from MJCF/URDF,
round trip through the checkpoint form, and the MJCF simulator it maps (sim/mjcf_env.py, real MuJoCo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtm_runtime.robot import BUNDLED_ROBOTS, RobotError, bundled_robot, load_robot, robot_from_dict
from mtm_runtime.sim.tasks import get_task

ARM = """\
name: arm3
joints: [a, b, c]
rate_hz: 50
state: {fields: [position, velocity]}
action: {interface: position, topic: /arm_controller/commands, type: Float64MultiArray}
limits: {low: [-1, -2, -3], high: [1, 2, 3]}
"""

MJCF = """\
<mujoco model="arm3">
  <option timestep="0.002"/>
  <default><joint damping="1" armature="0.01"/></default>
  <worldbody>
    <body name="l1"><joint name="a" type="hinge" axis="0 0 1"/><geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
      <body name="l2" pos="0.3 0 0"><joint name="b" type="hinge" axis="0 0 1"/><geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
        <body name="tip" pos="0.3 0 0"><joint name="c" type="hinge" axis="0 0 1"/><geom type="sphere" size="0.02"/></body>
      </body>
    </body>
    <body name="target" pos="0.4 0.2 0"><geom type="sphere" size="0.01" contype="0" conaffinity="0"/></body>
  </worldbody>
  <actuator>
    <position joint="c" kp="40" ctrlrange="-0.5 0.5"/>
    <position joint="a" kp="40" ctrlrange="-1.5 1.5"/>
    <position joint="b" kp="40" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""

URDF = """\
<robot name="arm3">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/>
  <joint name="b" type="revolute"><parent link="l1"/><child link="l2"/><limit lower="-0.7" upper="0.8" effort="1" velocity="1"/></joint>
  <joint name="a" type="revolute"><parent link="base"/><child link="l1"/><limit lower="-1.1" upper="1.2" effort="1" velocity="1"/></joint>
  <joint name="c" type="revolute"><parent link="l2"/><child link="l3"/><limit lower="-0.3" upper="0.4" effort="1" velocity="1"/></joint>
</robot>
"""


def test_bundled_robots_are_the_benchmark_tasks() -> None:
    assert sorted(p.stem for p in BUNDLED_ROBOTS.glob("*.yaml")) == ["halfcheetah", "hopper", "inverted_double_pendulum", "pusher",
                                                                   "reacher", "walker2d"]
    r = bundled_robot("reacher")
    assert r.joints == ("joint0", "joint1") and r.state_dim == 8 and dict(r.extras) == {"goals": 2}
    assert dict(r.success) == {"body": "fingertip", "target": "target", "radius": 0.02}
    assert get_task("reacher").robot == r
    with pytest.raises(RobotError, match="no bundled robot 'nope'.*reacher"):
        bundled_robot("nope")


def test_robot_file_round_trip_and_widths(tmp_path: Path) -> None:
    path = tmp_path / "arm.yaml"
    path.write_text(ARM)
    r = load_robot(path)
    assert r.state_names() == ["a.position", "b.position", "c.position", "a.velocity", "b.velocity", "c.velocity"]
    assert r.modality_widths() == {"states": 6, "actions": 3}
    assert r.modality_widths(rewards=True) == {"states": 6, "actions": 3, "returns": 1}
    back = robot_from_dict(r.to_dict())
    assert back == r and np.array_equal(back.limits.high, [1, 2, 3])
    r.check_joints(["a", "b", "c"], "node")
    with pytest.raises(RobotError, match="node: joint 1 is 'c', robot 'arm3' has 'b' there"):
        r.check_joints(["a", "c", "b"], "node")
    with pytest.raises(RobotError, match="2 joints, robot 'arm3' has 3"):
        r.check_joints(["a", "b"], "node")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("name: arm3\n", ""), "missing key 'name'"),
    (lambda s: s.replace("rate_hz: 50", "rate_hz: -5"), "'rate_hz' must be a number"),
    (lambda s: s.replace("joints: [a, b, c]", "joints: [a, b, a]"), "'joints' names 'a' twice"),
    (lambda s: s.replace("[position, velocity]", "[position, torque]"), "'state.fields\\[1\\]' must be one of"),
    (lambda s: s.replace("interface: position", "interface: impedance"), "'action.interface' must be one of"),
    (lambda s: s.replace("type: Float64MultiArray", "type: Twist"), "'action.type' must be one of"),
    (lambda s: s.replace("low: [-1, -2, -3]", "low: [-1, -2]"), "'limits.low' must give one number per joint \\(3\\)"),
    (lambda s: s.replace("high: [1, 2, 3]", "high: [1, -2, 3]"), "'limits' joint 1: low -2.0 is not below high -2.0"),
    (lambda s: s + "colour: red\n", "unknown key 'colour'"),
    (lambda s: s.replace("state: {fields: [position, velocity]}", "state: {extras: {ee_pose: 7}}"),
     "'state.extras.ee_pose': only 'goals'"),
])
def test_bad_robot_file_names_the_key(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit(ARM))
    with pytest.raises(RobotError, match=f"bad.yaml: {message}"):
        load_robot(path)


def test_not_yaml_or_missing(tmp_path: Path) -> None:
    with pytest.raises(RobotError, match="no such robot file"):
        load_robot(tmp_path / "none.yaml")
    (tmp_path / "x.yaml").write_text("joints: [a\n")
    with pytest.raises(RobotError, match="x.yaml: not a readable YAML file"):
        load_robot(tmp_path / "x.yaml")


def test_limits_from_mjcf_and_urdf(tmp_path: Path) -> None:
    (tmp_path / "arm.xml").write_text(MJCF)
    (tmp_path / "arm.urdf").write_text(URDF)
    base = ARM.split("limits:")[0]
    (tmp_path / "m.yaml").write_text(base + "limits: {from: arm.xml}\n")
    (tmp_path / "u.yaml").write_text(base + "limits: {from: arm.urdf}\n")
    m = load_robot(tmp_path / "m.yaml").limits
    np.testing.assert_allclose(m.low, [-0.5, -1.5, -1])     # actuator order, as the MJCF lists them
    u = load_robot(tmp_path / "u.yaml").limits
    np.testing.assert_allclose(u.low, [-1.1, -0.7, -0.3])   # by joint name, in the robot's order
    np.testing.assert_allclose(u.high, [1.2, 0.8, 0.4])
    (tmp_path / "v.yaml").write_text(base.replace("[a, b, c]", "[a, b, d]") + "limits: {from: arm.urdf}\n")
    with pytest.raises(RobotError, match="joint 'd' has no <limit"):
        load_robot(tmp_path / "v.yaml")


def test_mjcf_simulator_maps_joints_and_actuators_by_name(tmp_path: Path) -> None:
    (tmp_path / "arm.xml").write_text(MJCF)
    (tmp_path / "arm.yaml").write_text(ARM.split("limits:")[0] + "limits: {from: arm.xml}\n"
                                       "sim: {mjcf: arm.xml, episode_steps: 30}\n"
                                       "success: {body: tip, target: target, radius: 0.05}\n")
    task = get_task(str(tmp_path / "arm.yaml"))
    assert (task.obs_dim, task.action_dim, task.episode_steps, task.rewards) == (6, 3, 30, True)
    env = task.make_env(seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6,)
    target = np.array([0.3, -0.2, 0.1])
    for _ in range(30):
        obs, r, term, trunc, _ = env.step(target)
    np.testing.assert_allclose(obs[:3], target, atol=0.03)   # each action dimension drove its own joint
    assert trunc and r < 0 and task.success(env) in (True, False)
    env.close()
    (tmp_path / "bad.yaml").write_text(ARM.replace("[a, b, c]", "[a, b, z]").split("limits:")[0] + "sim: {mjcf: arm.xml}\n")
    with pytest.raises(RobotError, match="joint 'z' is not a joint of this MJCF"):
        get_task(str(tmp_path / "bad.yaml")).make_env()


def test_the_robot_travels_in_the_checkpoint_and_the_onnx_metadata(tmp_path: Path) -> None:
    import json

    from fault_helpers import tiny_checkpoint
    from mtm_runtime.checkpoint import CheckpointError, load_checkpoint
    from mtm_runtime.integrity import stamp_json
    from mtm_runtime.export.onnx_export import export_onnx
    from mtm_runtime.onnx_metadata import read_onnx_metadata
    from mtm_runtime.policy import Policy
    from mtm_runtime.robot import robot_of_metadata

    (tmp_path / "arm.yaml").write_text(ARM)
    robot = load_robot(tmp_path / "arm.yaml")
    ckpt_dir = tiny_checkpoint(tmp_path / "ckpt", states=6, actions=3, provenance={"robot": robot.to_dict()})
    assert robot_of_metadata(load_checkpoint(ckpt_dir).metadata()) == robot
    export_onnx(load_checkpoint(ckpt_dir), tmp_path / "m.onnx")
    meta = read_onnx_metadata(tmp_path / "m.onnx")
    assert robot_of_metadata(meta) == robot
    assert robot_of_metadata(Policy.load(tmp_path / "m.onnx").metadata) == robot
    # a robot whose widths are not the model's is refused at load, even with a valid stamp
    m = json.loads((ckpt_dir / "mtm.json").read_text())
    m["provenance"]["robot"]["joints"] = ["a", "b"]
    del m["provenance"]["robot"]["limits"]
    (ckpt_dir / "mtm.json").write_text(json.dumps(stamp_json(m)))
    with pytest.raises(CheckpointError, match="provenance.robot: robot 'arm3' has states of width 4, the spec 6"):
        load_checkpoint(ckpt_dir)
