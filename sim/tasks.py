"""Tasks: a robot description plus the simulator that runs it, for training, evaluation and HIL.

``TASKS`` holds the four benchmark tasks, each built from its bundled robot file
(``mtm_runtime/robots/*.yaml``); nothing registers itself on import. ``get_task`` accepts a
benchmark name ("reacher"), any Gymnasium id ("HalfCheetah-v5": dimensions read from the env once),
or a robot file's path (its ``sim.env`` or ``sim.mjcf`` is the simulator; ``sim/mjcf_env.py`` runs
an MJCF with the joints and actuators mapped by the robot description).

Modalities per task (``Task.modality_widths``, in the order the model should use):
``states`` is what the policy sees each step: for goal tasks (Reacher) the observation without
the goal part (the goal is its own ``goals`` modality); elsewhere the full observation.
``returns`` is the undiscounted return-to-go (1 float); ``rtg_horizon`` is the per-task horizon
(the episode length) the normaliser may use to scale it.

Reference returns (uniform-random policy and noise-free scripted expert) are frozen numbers
measured by ``sim/measure_reference_returns.py`` and read from ``sim/reference_returns.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mtm_runtime.robot import Robot, RobotError, bundled_robot, load_robot, robot_from_dict

if TYPE_CHECKING:  # gymnasium and MuJoCo load only where an environment is made
    import gymnasium

    from mtm_runtime.sim.randomisation import Randomisation

__all__ = ["Task", "TASKS", "get_task", "REFERENCE_RETURNS_PATH", "load_reference_returns", "task_for_robot",
           "task_for_env", "task_for_data", "task_for_provenance", "TaskError"]


class TaskError(KeyError):
    """No such task, environment or robot file; ``str()`` is the one-line message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


REFERENCE_RETURNS_PATH = Path(__file__).with_name("reference_returns.json")


def load_reference_returns() -> dict[str, dict]:
    """The whole frozen table (task -> random/expert/zero returns, lengths, success rates); {} if absent."""
    if not REFERENCE_RETURNS_PATH.exists():
        return {}
    return json.loads(REFERENCE_RETURNS_PATH.read_text())


@dataclass(frozen=True)
class Task:
    """One MuJoCo task: environment factory, modality layout, expert and scoring."""

    name: str
    env_id: str
    episode_steps: int
    rtg_horizon: int
    has_goal: bool
    reference_returns: dict = field(hash=False, compare=False)
    joint_names: tuple[str, ...] = ()
    obs_dim: int = 0
    action_dim: int = 0
    goal_slice: tuple[int, int] | None = None   # [start, stop) of the goal in the observation
    robot: Robot | None = field(default=None, hash=False, compare=False)
    mjcf: str = ""                               # a robot file's MJCF (instead of a Gymnasium id)
    key: str = ""                                # what get_task takes to give this task back ("" = name)
    rewards: bool = True                         # False: the data has no rewards, so no returns modality

    # ---- environments ---------------------------------------------------------------------
    def make_env(self, seed: int | None = None, randomisation: Randomisation | None = None,
                 episode_steps: int | None = None) -> Any:   # a gymnasium.Env (MuJoCo attributes untyped there)
        """A fresh env (with the TimeLimit of ``episode_steps``, the task's own unless given); randomised if asked.

        ``seed`` seeds the action space and the randomisation generator; still pass a seed to
        ``reset`` to fix the initial state.
        """
        if not self.env_id:
            raise TaskError(f"{self.name}: no simulator for this data (pass --env GYM_ID, or a robot file with sim.env "
                            "or sim.mjcf); training needs none, rollout evaluation does")
        steps = self.episode_steps if not episode_steps else int(episode_steps)
        if steps < 1:
            raise ValueError(f"{self.name}: episode_steps must be >= 1, got {steps}")
        import gymnasium

        from mtm_runtime.sim.randomisation import RandomisationWrapper

        if self.mjcf:
            from mtm_runtime.sim.mjcf_env import MjcfRobotEnv

            assert self.robot is not None
            env: gymnasium.Env = gymnasium.wrappers.TimeLimit(MjcfRobotEnv(self.mjcf, self.robot), steps)
        else:
            env = gymnasium.make(self.env_id, max_episode_steps=steps)
        if randomisation is not None:
            env = RandomisationWrapper(env, randomisation, seed=seed)
        if seed is not None:
            env.action_space.seed(seed)
        return env

    # ---- modalities ------------------------------------------------------------------------
    def modality_widths(self) -> dict[str, int]:
        """Widths in model order: states, actions, returns (and goals for goal tasks)."""
        widths = {"states": self.state_dim, "actions": self.action_dim}
        if self.rewards:
            widths["returns"] = 1
        if self.has_goal:
            widths["goals"] = self.goal_dim
        return widths

    def with_data_widths(self, widths: dict[str, int]) -> "Task":
        """This task with a returns modality exactly when the data has one (a log without rewards
        trains without returns)."""
        return dataclasses.replace(self, rewards="returns" in widths)

    @property
    def goal_dim(self) -> int:
        return 0 if self.goal_slice is None else self.goal_slice[1] - self.goal_slice[0]

    @property
    def state_dim(self) -> int:
        return self.obs_dim - self.goal_dim

    def split_observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """``obs [..., obs_dim]`` -> ``{"states": [..., state_dim], "goals": [..., goal_dim]}``."""
        obs = np.asarray(obs)
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"{self.name}: observation has width {obs.shape[-1]}, expected {self.obs_dim}")
        if self.goal_slice is None:
            return {"states": obs}
        a, b = self.goal_slice
        return {"states": np.concatenate([obs[..., :a], obs[..., b:]], axis=-1), "goals": obs[..., a:b]}

    def join_observation(self, states: np.ndarray, goals: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`split_observation`."""
        if self.goal_slice is None:
            return np.asarray(states)
        a, _ = self.goal_slice
        return np.concatenate([states[..., :a], goals, states[..., a:]], axis=-1)

    # ---- expert and scoring ---------------------------------------------------------------
    def make_expert(self, env: gymnasium.Env) -> Callable[[np.ndarray], np.ndarray]:
        """Noise-free scripted expert, ``obs [obs_dim] -> action [action_dim]`` (see sim/experts.py)."""
        from mtm_runtime.sim import experts  # MuJoCo: only with an environment

        return experts.make_expert(env)

    @property
    def has_reference(self) -> bool:
        lo, hi = self.reference_returns.get("random"), self.reference_returns.get("expert")
        return lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)) and hi != lo

    def normalised_score(self, episode_return: float) -> float:
        """D4RL-style: ``100 * (R - R_random) / (R_expert - R_random)``; RuntimeError if unmeasured."""
        if not self.has_reference:
            raise RuntimeError(f"{self.name}: no reference returns in {REFERENCE_RETURNS_PATH}; "
                               "run `python -m mtm_runtime.sim.measure_reference_returns`")
        lo, hi = self.reference_returns["random"], self.reference_returns["expert"]
        return 100.0 * (episode_return - lo) / (hi - lo)

    def score_or_none(self, episode_return: float) -> float | None:
        """The normalised score where reference returns exist, else None (report the return)."""
        return self.normalised_score(episode_return) if self.has_reference else None

    def success(self, env: Any, info: dict | None = None) -> bool | None:
        """The robot file's success rule (a body within ``radius`` of a target body in the
        horizontal plane, at episode end: Reacher's fingertip within 2 cm); None without one."""
        rule = dict(self.robot.success) if self.robot is not None else {}
        if not rule:
            return None
        data = env.unwrapped.data
        d = data.body(rule["body"]).xpos[:2] - data.body(rule["target"]).xpos[:2]
        return bool(np.linalg.norm(d) < float(rule["radius"]))


def actuated_joint_names(env: Any) -> tuple[str, ...]:
    """Names of the joints driven by the env's actuators, in actuator order."""
    import mujoco

    m = env.unwrapped.model
    return tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(m.actuator_trnid[i, 0])) for i in range(m.nu))


def task_for_robot(robot: Robot, goal_slice: tuple[int, int] | None = None, name: str = "",
                   reference_returns: dict | None = None, key: str = "") -> Task:
    """The task of a robot description: its simulator (``sim.env`` or ``sim.mjcf``; none: training
    only), widths and success rule. Reference returns: the frozen table for benchmark names, else
    those given."""
    env_id, mjcf = robot.sim_option("env", ""), robot.sim_option("mjcf", "")
    name = name or robot.name
    goals = dict(robot.extras).get("goals", 0)
    if goal_slice is None and goals:   # a robot file's goal follows its states in the observation
        goal_slice = (robot.state_dim, robot.state_dim + goals)
    refs = reference_returns if reference_returns is not None else load_reference_returns().get(name, {})
    goal_dim = 0 if goal_slice is None else goal_slice[1] - goal_slice[0]
    steps = int(robot.sim_option("episode_steps", 1000))
    return Task(name=name, env_id=env_id or (f"mjcf:{Path(mjcf).name}" if mjcf else ""), episode_steps=steps, rtg_horizon=steps,
                has_goal=goal_slice is not None,
                reference_returns={k: float(refs[k]) if k in refs else math.nan for k in ("random", "expert", "zero")},
                joint_names=robot.joints, obs_dim=robot.state_dim + goal_dim, action_dim=robot.action_dim,
                goal_slice=goal_slice, robot=robot, mjcf=mjcf, key=key or name)


@functools.lru_cache(maxsize=None)
def task_for_env(env_id: str) -> Task:
    """A task for any Gymnasium environment with Box observation and action spaces: dimensions,
    episode length and (MuJoCo) actuated joints read from one instance; no reference returns."""
    import gymnasium

    try:
        env = gymnasium.make(env_id)
    except Exception as e:  # noqa: BLE001 - gymnasium raises several types for an unknown or broken id
        raise TaskError(f"unknown environment {env_id!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"benchmark tasks: {', '.join(TASKS)}") from None
    try:
        obs, act = env.observation_space, env.action_space
        if not isinstance(obs, gymnasium.spaces.Box) or len(obs.shape) != 1:
            raise TaskError(f"{env_id}: observation space {obs} is not a flat Box; only flat Box observations are supported")
        if not isinstance(act, gymnasium.spaces.Box) or len(act.shape) != 1:
            raise TaskError(f"{env_id}: action space {act} is not a flat Box (discrete actions are not supported)")
        try:
            joints = actuated_joint_names(env)
        except AttributeError:  # not a MuJoCo env
            joints = tuple(f"action{i}" for i in range(act.shape[0]))
        low, high = np.asarray(act.low, np.float64), np.asarray(act.high, np.float64)
        limits = {"low": low.tolist(), "high": high.tolist()} if np.all(np.isfinite(low)) and np.all(np.isfinite(high)) else None
        steps = int(env.spec.max_episode_steps or 1000) if env.spec is not None else 1000
        dt = getattr(env.unwrapped, "dt", None)
        robot = {"name": env_id.replace(":", "_"), "joints": list(joints), "rate_hz": float(1.0 / dt) if dt else 50.0,
                 "state": {"observation": int(obs.shape[0])}, "sim": {"env": env_id, "episode_steps": steps}}
        if limits:
            robot["limits"] = limits
        return task_for_robot(robot_from_dict(robot, env_id), name=env_id, reference_returns={})
    finally:
        env.close()


def task_for_data(name: str, obs_dim: int, action_dim: int, rewards: bool = True, env_id: str = "",
                  episode_steps: int = 1000) -> Task:
    """A task read from a dataset alone: widths, no robot file; ``env_id`` names its simulator if
    the data says one (it may not install here: then only ``make_env`` fails, with the reason)."""
    nan = {k: math.nan for k in ("random", "expert", "zero")}
    return Task(name=name, env_id=env_id, episode_steps=episode_steps, rtg_horizon=episode_steps, has_goal=False,
                reference_returns=nan, obs_dim=obs_dim, action_dim=action_dim, rewards=rewards, key=env_id or name)


def task_for_provenance(provenance: dict, env: str = "") -> Task:
    """The task to evaluate a checkpoint on: ``env`` if given, else what its training run recorded
    (``provenance.task``: a benchmark name, Gymnasium id or robot file; else ``provenance.robot``'s
    simulator). Reference returns recorded with the data (Minari's) fill in where the task has none."""
    key = env or str(provenance.get("task") or "")
    robot = provenance.get("robot")
    try:
        task = get_task(key)
    except TaskError as e:
        if env:   # the user's --env names no simulator: say why
            raise TaskError(f"--env {env!r}: {e}") from None
        if not isinstance(robot, dict) or not (robot.get("sim") or {}):
            hint = f"it was trained on {key!r}; " if key else ""
            raise TaskError(f"no simulator for this checkpoint ({hint}pass --env GYM_ID or a robot file with sim.env / "
                            "sim.mjcf)") from None
        try:
            task = task_for_robot(robot_from_dict(robot, "checkpoint provenance.robot"))
        except RobotError as e:
            raise TaskError(str(e)) from None
    refs = provenance.get("reference_returns") or {}
    if not task.has_reference and "random" in refs and "expert" in refs:
        task = dataclasses.replace(task, reference_returns={"zero": math.nan, **{k: float(v) for k, v in refs.items()}})
    return task


#: The benchmark tasks: their robot files plus where Reacher's goal sits in the observation.
#: Checked against MuJoCo by tests/sim/test_sim_tasks.py; building them makes no environment.
TASKS: dict[str, Task] = {
    "reacher": task_for_robot(bundled_robot("reacher"), goal_slice=(4, 6)),
    "inverted_double_pendulum": task_for_robot(bundled_robot("inverted_double_pendulum")),
    "hopper": task_for_robot(bundled_robot("hopper")),
    "halfcheetah": task_for_robot(bundled_robot("halfcheetah")),
    "walker2d": task_for_robot(bundled_robot("walker2d")),
    "pusher": task_for_robot(bundled_robot("pusher")),
}
_BY_ENV_ID = {t.env_id: t for t in TASKS.values()}


def get_task(name: str) -> Task:
    """Task by benchmark name ("reacher"), Gymnasium id ("Reacher-v5", "HalfCheetah-v5") or robot
    file path ("robot.yaml"); TaskError (a KeyError) with one line otherwise."""
    if name in TASKS:
        return TASKS[name]
    if name in _BY_ENV_ID:
        return _BY_ENV_ID[name]
    if not name:
        raise TaskError(f"no task given; pass a benchmark task ({', '.join(TASKS)}), a Gymnasium id or a robot file")
    if name.endswith((".yaml", ".yml")):
        try:
            return task_for_robot(load_robot(name), key=str(Path(name).resolve()))
        except RobotError as e:
            raise TaskError(str(e)) from None
    return task_for_env(name)
