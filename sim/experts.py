"""Scripted, noise-free experts for the MuJoCo tasks (obs -> action, numpy only).

Each expert is built from the environment's MuJoCo model *at construction time* (a private deep
copy), so domain randomisation applied later by ``mtm_runtime.sim.tasks.RandomisationWrapper`` is not known
to the expert: it behaves like a controller designed on the nominal model.

* Reacher-v5: damped-least-squares (DLS) Jacobian controller. A desired fingertip velocity
  (proportional to the fingertip-to-target error, m/s) is mapped to joint velocities with
  ``dq = J^T (J J^T + lambda^2 I)^-1 v``, then to torques by joint-velocity tracking with damping.
* InvertedDoublePendulum-v5: discrete LQR on a finite-difference linearisation of one control
  step (``frame_skip`` physics steps) around the upright equilibrium; Riccati equation solved by
  fixed-point iteration (no scipy needed).
* Hopper-v5, HalfCheetah-v5, Walker2d-v5: the best iterate of the task's ARS learning run (a
  linear policy on whitened observations; ``sim/ars.py``, stored in ``sim/learning_runs/``), the
  same run whose earlier iterates and rollouts make the medium tiers (``training/run_tiers.py``).
  (A hand-tuned PD balance controller used on Hopper until 2026-11-25 only stood: return ~1020,
  alive bonus only, which made Hopper's scores measure survival rather than locomotion.)
* Pusher-v5: a two-phase DLS Jacobian controller (move the tip behind the object, then push it
  to the goal). Stretch goal, NOT functional yet: with its first gains it scored below the random
  policy (-215.1 vs -150.5, doing nothing -54.8, 20 seeds, 2026-11-25; control cost -185 of it);
  with low gains (``PusherExpert``'s defaults since then) it returns about -42, above both, but
  still moves the object only 4-5 cm towards the goal, so no reference returns are frozen for
  pusher. (A probe
  with operational-space control and a posture term in the null space cut the cost but pushed no
  better: the pushing surface is the wrist's U-shaped finger capsules, whose orientation the
  controller would have to manage; not done. A second probe did manage it: the wrist reaches object
  height with the U's crossbar horizontal only with its opening pitched up, about 0.8 rad, which
  a DLS controller on position and full orientation reaches behind the object after about 55
  steps. It still pushed 1-2 cm, because the contact is very soft for this object (mass 8e-6 kg,
  slide damping 0.5): the push force is about 0.5 N per metre of penetration, so the object moves
  at about its penetration depth per second. A pusher must drive through the object as fast as
  the control cost allows; not done.)
"""
from __future__ import annotations

import copy
from typing import Callable

import mujoco
import numpy as np

from mtm_runtime.sim.learning_run import load_run

Expert = Callable[[np.ndarray], np.ndarray]


def _unwrapped_model(env) -> mujoco.MjModel:
    return env.unwrapped.model


# ---------------------------------------------------------------------------------------------
# Reacher
# ---------------------------------------------------------------------------------------------
class ReacherExpert:
    """DLS Jacobian controller for Reacher-v5.

    Observation (10): cos q0, cos q1, sin q0, sin q1, target x, target y (m), qdot0, qdot1 (rad/s),
    fingertip - target x, y (m). Action (2): normalised torques in [-1, 1] (gear 200).
    """

    def __init__(self, model: mujoco.MjModel, kp: float = 10.0, v_max: float = 2.0,
                 damping: float = 0.05, kv: float = 0.1, k_null: float = 5.0,
                 action_limit: float = 1.0) -> None:
        self.model = copy.deepcopy(model)
        self.data = mujoco.MjData(self.model)
        body = lambda n: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, n)  # noqa: E731
        self.tip = body("fingertip")
        self.l1 = float(np.linalg.norm(self.model.body_pos[body("body1")][:2]))   # upper link (m)
        self.l2 = float(np.linalg.norm(self.model.body_pos[self.tip][:2]))         # forearm (m)
        self.gear = self.model.actuator_gear[:2, 0].copy()
        self.kp, self.v_max, self.lam2, self.kv, self.k_null = kp, v_max, damping ** 2, kv, k_null
        self.limit = action_limit
        self.jacp = np.zeros((3, self.model.nv))

    def elbow_target(self, target: np.ndarray, q1: float) -> float:
        """Elbow angle (rad) that puts the fingertip at the target's radius (law of cosines)."""
        r2 = float(target @ target)
        c = np.clip((r2 - self.l1 ** 2 - self.l2 ** 2) / (2 * self.l1 * self.l2), -1.0, 1.0)
        return float(np.arccos(c)) * (1.0 if q1 >= 0 else -1.0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        q = np.arctan2(obs[2:4], obs[0:2])
        qd = obs[6:8]
        err = -obs[8:10]                       # target - fingertip (m)
        self.data.qpos[:2] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacBody(self.model, self.data, self.jacp, None, self.tip)
        J = self.jacp[:2, :2]
        v = self.kp * err                      # desired fingertip velocity (m/s)
        speed = np.linalg.norm(v)
        if speed > self.v_max:
            v *= self.v_max / speed
        J_pinv = J.T @ np.linalg.inv(J @ J.T + self.lam2 * np.eye(2))   # damped least squares
        dq_des = J_pinv @ v
        # secondary task in the (numerical) null space: bend the elbow towards the angle that
        # matches the target radius. It only acts where DLS is weak, i.e. at the stretched-arm
        # singularity the arm starts in.
        z = np.array([0.0, self.k_null * (self.elbow_target(obs[4:6], q[1]) - q[1])])
        dq_des += (np.eye(2) - J_pinv @ J) @ z
        tau = self.kv * self.gear * (dq_des - qd)   # joint-velocity tracking with damping (N m)
        return np.clip(tau / self.gear, -self.limit, self.limit).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Inverted double pendulum
# ---------------------------------------------------------------------------------------------
def linearise_step(model: mujoco.MjModel, frame_skip: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Central finite differences of one control step around qpos = qvel = ctrl = 0.

    State s = (qpos, qvel) (nq + nv), input u = ctrl (nu). Returns (A, B) of
    ``s' = A s + B u`` with ``frame_skip`` calls of ``mj_step`` on a fresh MjData.
    """
    nq, nv, nu = model.nq, model.nv, model.nu
    data = mujoco.MjData(model)

    def step(s: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:] = s[:nq]
        data.qvel[:] = s[nq:]
        data.ctrl[:] = u
        for _ in range(frame_skip):
            mujoco.mj_step(model, data)
        return np.concatenate([data.qpos, data.qvel])

    s0, u0 = np.zeros(nq + nv), np.zeros(nu)
    A = np.zeros((nq + nv, nq + nv))
    B = np.zeros((nq + nv, nu))
    for i in range(nq + nv):
        d = np.zeros(nq + nv)
        d[i] = eps
        A[:, i] = (step(s0 + d, u0) - step(s0 - d, u0)) / (2 * eps)
    for j in range(nu):
        d = np.zeros(nu)
        d[j] = eps
        B[:, j] = (step(s0, u0 + d) - step(s0, u0 - d)) / (2 * eps)
    return A, B


def solve_dare(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray,
               iters: int = 100_000, tol: float = 1e-10) -> np.ndarray:
    """Discrete algebraic Riccati equation by value iteration; returns P (raises if no convergence)."""
    P = Q.copy()
    for _ in range(iters):
        BtP = B.T @ P
        K = np.linalg.solve(R + BtP @ B, BtP @ A)
        P_next = Q + A.T @ P @ A - A.T @ P @ B @ K
        P_next = 0.5 * (P_next + P_next.T)
        if np.max(np.abs(P_next - P)) < tol * max(1.0, np.max(np.abs(P))):
            return P_next
        P = P_next
    raise RuntimeError("solve_dare: Riccati iteration did not converge")


def lqr_gain(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray) -> np.ndarray:
    """K of the discrete LQR, u = -K s."""
    P = solve_dare(A, B, Q, R)
    return np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)


class IDPExpert:
    """LQR for InvertedDoublePendulum-v5 around upright.

    Observation (9): cart x (m), sin th1, sin th2, cos th1, cos th2, qdot (3; m/s, rad/s, clipped to
    +-10), constraint force. Action (1): normalised cart force in [-1, 1] (gear 500).
    """

    def __init__(self, model: mujoco.MjModel, frame_skip: int = 5,
                 q_diag: tuple[float, ...] = (1.0, 50.0, 50.0, 0.5, 2.0, 2.0), r: float = 1.0) -> None:
        model = copy.deepcopy(model)
        A, B = linearise_step(model, frame_skip)
        self.K = lqr_gain(A, B, np.diag(q_diag), np.array([[r]]))
        self.low, self.high = model.actuator_ctrlrange[:, 0].copy(), model.actuator_ctrlrange[:, 1].copy()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        th = np.arctan2(obs[1:3], obs[3:5])
        s = np.concatenate([obs[:1], th, obs[5:8]])
        return np.clip(-self.K @ s, self.low, self.high).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Locomotion: the best iterate of a learning run
# ---------------------------------------------------------------------------------------------
class LinearExpert:
    """A linear policy on whitened observations, ``a = clip(M (o - mu) / sigma, low, high)``.

    The parameters are data, not code: an iterate of a learning run written by ``sim/ars.py``
    (Augmented Random Search, which also acts through this class while it searches). The
    locomotion experts are the best iterates of their runs (``run_expert``); reference numbers in
    ``sim/reference_returns.json``.
    """

    def __init__(self, M: np.ndarray, mu: np.ndarray, sigma: np.ndarray, low: np.ndarray, high: np.ndarray,
                 where: str = "linear expert") -> None:
        self.M = np.asarray(M, dtype=np.float64)          # [act_dim, obs_dim]
        self.mu = np.asarray(mu, dtype=np.float64)        # [obs_dim]
        self.sigma = np.asarray(sigma, dtype=np.float64)  # [obs_dim], > 0
        if self.M.shape != (len(low), len(self.mu)) or self.sigma.shape != self.mu.shape or np.any(self.sigma <= 0):
            raise ValueError(f"{where}: linear expert has M {self.M.shape}, mu {self.mu.shape}, sigma {self.sigma.shape}; "
                             f"expected M [{len(low)}, obs_dim] and positive sigma [obs_dim]")
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        o = np.asarray(obs, dtype=np.float64)
        return np.clip(self.M @ ((o - self.mu) / self.sigma), self.low, self.high).astype(np.float32)


def run_expert(task_name: str, env) -> LinearExpert:
    """The expert iterate of ``task_name``'s bundled learning run (``LearningRun.expert_iterate``),
    acting in ``env``'s action space."""
    run = load_run(task_name)
    return LinearExpert(*run.iterate(run.expert_iterate()), env.action_space.low, env.action_space.high,
                        where=f"{task_name} learning run")


# ---------------------------------------------------------------------------------------------
# Pusher (stretch)
# ---------------------------------------------------------------------------------------------
class PusherExpert:
    """Two-phase DLS controller for Pusher-v5: approach behind the object, then push to the goal.

    Observation (23): 7 joint angles, 7 joint velocities, tip xyz, object xyz, goal xyz (m).
    Action (7): joint torques in [-2, 2].

    Not functional yet (module docstring): on seeds 10000-10009 it reaches the object after about
    70 of the 100 steps and moves it from 0.21 m to about 0.17 m of the goal, return -42 (random
    -149, do nothing -55). Pusher-v5 charges 0.1 |a|^2 per step, so the gains are low: the first
    ones (kp 6, kv 0.5, v_max 0.8, behind 0.09) saturated the torques and returned -213.
    """

    def __init__(self, model: mujoco.MjModel, kp: float = 3.0, kv: float = 0.1, lam: float = 0.05,
                 behind: float = 0.06, v_max: float = 1.5) -> None:
        self.model = copy.deepcopy(model)
        self.data = mujoco.MjData(self.model)
        self.tip = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "tips_arm")
        self.kp, self.kv, self.lam2, self.behind, self.v_max = kp, kv, lam ** 2, behind, v_max
        self.jacp = np.zeros((3, self.model.nv))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        q, qd = obs[0:7], obs[7:14]
        tip, obj, goal = obs[14:17], obs[17:20], obs[20:23]
        push_dir = goal[:2] - obj[:2]
        push_dir /= max(np.linalg.norm(push_dir), 1e-6)
        approach = obj.copy()
        approach[:2] -= self.behind * push_dir
        approach[2] = obj[2]
        tip_to_app = approach - tip
        if np.linalg.norm(tip_to_app[:2]) > 0.03 and np.dot(tip[:2] - obj[:2], push_dir) > -0.05:
            target = approach  # not yet behind the object: go there
        else:
            target = np.array([goal[0], goal[1], obj[2]]) - 0.02 * np.append(push_dir, 0.0)
        v = self.kp * (target - tip)
        speed = np.linalg.norm(v)
        if speed > self.v_max:
            v *= self.v_max / speed
        self.data.qpos[:7] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacBody(self.model, self.data, self.jacp, None, self.tip)
        J = self.jacp[:, :7]
        dq = J.T @ np.linalg.solve(J @ J.T + self.lam2 * np.eye(3), v)
        tau = self.kv * (dq - qd) * 10.0
        return np.clip(tau, -2.0, 2.0).astype(np.float32)


EXPERTS: dict[str, Callable[..., Expert]] = {
    "Reacher-v5": lambda env: ReacherExpert(_unwrapped_model(env)),
    "InvertedDoublePendulum-v5": lambda env: IDPExpert(_unwrapped_model(env), frame_skip=env.unwrapped.frame_skip),
    "Hopper-v5": lambda env: run_expert("hopper", env),
    "HalfCheetah-v5": lambda env: run_expert("halfcheetah", env),
    "Walker2d-v5": lambda env: run_expert("walker2d", env),
    "Pusher-v5": lambda env: PusherExpert(_unwrapped_model(env)),
}


def make_expert(env) -> Expert:
    """Noise-free expert for ``env`` (a gymnasium env whose spec id is in EXPERTS)."""
    env_id = env.spec.id if env.spec is not None else env.unwrapped.spec.id
    if env_id not in EXPERTS:
        raise KeyError(f"no scripted expert for {env_id!r}; experts exist for {', '.join(EXPERTS)}")
    return EXPERTS[env_id](env)
