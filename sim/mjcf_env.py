"""A Gymnasium environment for a user's MJCF, with joints and actuators mapped by the robot file.

The policy sees exactly what the robot description says it sees on the hardware: for every state
field (position / velocity / effort), that field of every joint, in the description's joint order.
Each action dimension drives the actuator that acts on the joint of the same index. One env step
is one control period (``1 / rate_hz``), ``round(period / timestep)`` MuJoCo steps.

Episodes start from the model's first keyframe (or ``qpos0``) with every described joint moved by
a seeded uniform offset of up to ``INIT_NOISE`` rad. With a ``success`` rule in the robot file,
the reward is minus the distance between its two bodies (so returns and success come from the
same rule); without one, the reward is 0. The env never ends an episode itself: the task's
``episode_steps`` (a ``TimeLimit``) does.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import mujoco
import numpy as np

from mtm_runtime.robot import Robot, RobotError

#: Initial joint offset (rad or m) drawn uniformly in [-INIT_NOISE, INIT_NOISE] at reset.
INIT_NOISE = 0.3


class MjcfRobotEnv(gymnasium.Env):
    """``MjcfRobotEnv(path, robot)``: the MJCF at ``path`` seen through ``robot``'s description."""

    metadata = {"render_modes": []}

    def __init__(self, path: str, robot: Robot) -> None:
        try:
            self.model = mujoco.MjModel.from_xml_path(str(path))
        except (ValueError, OSError) as e:
            raise RobotError(f"{path}: MuJoCo cannot load this MJCF ({str(e).splitlines()[0]})") from None
        self.data = mujoco.MjData(self.model)
        self.robot = robot
        m = self.model
        self.qpos_adr, self.dof_adr, self.actuators = [], [], []
        driven = {int(m.actuator_trnid[i, 0]): i for i in range(m.nu) if m.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT}
        for j in robot.joints:
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)
            if jid < 0:
                raise RobotError(f"{path}: robot {robot.name!r} joint {j!r} is not a joint of this MJCF")
            if jid not in driven:
                raise RobotError(f"{path}: robot {robot.name!r} joint {j!r} has no actuator in this MJCF")
            self.qpos_adr.append(int(m.jnt_qposadr[jid]))
            self.dof_adr.append(int(m.jnt_dofadr[jid]))
            self.actuators.append(driven[jid])
        if robot.observation_dim or robot.extras:
            raise RobotError(f"robot {robot.name!r}: an MJCF simulator serves joint state fields only "
                             "(no state.observation or state.extras)")
        self.frame_skip = max(1, int(round(1.0 / (robot.rate_hz * m.opt.timestep))))
        self.dt = self.frame_skip * m.opt.timestep
        rule = dict(robot.success)
        self._bodies = None
        if rule:
            ids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, rule[k]) for k in ("body", "target")]
            for k, i in zip(("body", "target"), ids):
                if i < 0:
                    raise RobotError(f"{path}: success.{k} {rule[k]!r} is not a body of this MJCF")
            self._bodies = ids
        low = np.array([m.actuator_ctrlrange[a, 0] if m.actuator_ctrllimited[a] else -np.inf for a in self.actuators])
        high = np.array([m.actuator_ctrlrange[a, 1] if m.actuator_ctrllimited[a] else np.inf for a in self.actuators])
        if robot.limits is not None:
            low, high = np.maximum(low, robot.limits.low), np.minimum(high, robot.limits.high)
        self.action_space: gymnasium.spaces.Box = gymnasium.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        n = robot.state_dim
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (n,), dtype=np.float64)
        self._q0 = (m.key_qpos[0] if m.nkey else m.qpos0).copy()

    def _obs(self) -> np.ndarray:
        d, parts = self.data, []
        for f in self.robot.state_fields:
            if f == "position":
                parts.append(d.qpos[self.qpos_adr])
            elif f == "velocity":
                parts.append(d.qvel[self.dof_adr])
            else:
                parts.append(d.actuator_force[self.actuators])
        return np.concatenate(parts).astype(np.float64)

    def distance(self) -> float:
        """Distance between the success rule's two bodies (NaN without a rule)."""
        if self._bodies is None:
            return float("nan")
        a, b = self._bodies
        return float(np.linalg.norm(self.data.xpos[a][:2] - self.data.xpos[b][:2]))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self._q0
        self.data.qpos[self.qpos_adr] += self.np_random.uniform(-INIT_NOISE, INIT_NOISE, len(self.qpos_adr))
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, np.float64).reshape(-1), self.action_space.low, self.action_space.high)
        if a.shape != (len(self.actuators),) or not np.all(np.isfinite(a)):
            raise ValueError(f"{self.robot.name}: action must be {len(self.actuators)} finite floats, got {action!r}")
        self.data.ctrl[self.actuators] = a
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        dist = self.distance()
        reward = 0.0 if np.isnan(dist) else -dist
        return self._obs(), reward, False, False, {"distance": dist}
