"""Policy: spec + normaliser + buffer + mask mode + backend -> one action per control step.

    policy = Policy.load("models/reacher_embedded", backend="onnxruntime", mode="goal")
    policy.set_goal(goal_xy)
    policy.reset()
    while running:
        action = policy.act(state, reward=r_prev)   # float32 [action_width], inside policy.limits

Each ``act``:
1. validates the inputs (finite, right shape) — ``InputError`` before anything is touched;
2. starts a new buffer step: the normalised state (+ goal, + return-to-go in ``rcbc``);
3. mask = the mode's mask AND what the buffer holds (short history and missing modalities are
   hidden, never zero-padded);
4. runs the backend, reads the action at ``t = T-1``, denormalises, checks it is finite
   (``InferenceError`` otherwise) and clips it to the limits;
5. writes the executed (clipped) action back into the buffer as history for the next step.

Return-to-go bookkeeping (``rcbc``): ``rtg_0 = target_return``; ``rtg_t = rtg_{t-1} - r_{t-1}``
where ``r_{t-1}`` is the ``reward`` passed to this ``act`` (the reward received for the previous
action). Rewards passed on the first step of an episode are ignored.

Steady state allocates no numpy arrays: the returned action is a reused, read-only array —
valid until the next ``act``; ``.copy()`` it to keep it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mtm_runtime import masks as M
from mtm_runtime import package_paths
from mtm_runtime.backends import Backend, BackendError, backend_class, source_kind
from mtm_runtime.buffer import TrajectoryBuffer
from mtm_runtime.checkpoint import Checkpoint, CheckpointError, load_checkpoint, parse_metadata
from mtm_runtime.engine_sidecar import engine_output_tolerance, read_engine_sidecar
from mtm_runtime.fingerprint import check_fingerprint
from mtm_runtime.integrity import Trust
from mtm_runtime.normalise import Normaliser
from mtm_runtime.onnx_graph import checked_graph
from mtm_runtime.onnx_metadata import read_onnx_metadata
from mtm_runtime.safety import ActionLimits, UnsafeCommandError, all_finite, intersect_limits
from mtm_runtime.spec import ACTIONS, GOALS, RETURNS, STATES, TrajectorySpec

#: Modes ``act`` can run. ``id``/``fd`` are offered as helpers (infer_actions, predict_next_state).
CONTROL_MODES = ("bc", "rcbc", "goal")


class InputError(ValueError):
    """An input to the policy is malformed (NaN/Inf, wrong shape, missing goal ...)."""


class InferenceError(RuntimeError):
    """The backend produced something that must not reach an actuator (NaN/Inf)."""


def backend_for_checkpoint(ckpt: Checkpoint, backend: str = "torch", batch_size: int = 1,
                           **backend_options: Any) -> Backend:
    """A ``backend`` of static batch ``batch_size`` running ``ckpt``: torch kinds take the
    network, ONNX Runtime the checked graph traced in memory (``onnx_graph.checked_graph``; no
    file, so no artefact metadata); a TensorRT engine must be built beforehand."""
    kind = source_kind(backend)
    if kind == "torch":
        return backend_class(backend)(ckpt.build_model(), batch_size=batch_size, **backend_options)
    if kind == "onnx":
        graph = checked_graph(ckpt, batch_size).proto.SerializeToString()
        return backend_class(backend)(graph, ckpt.spec,
                                      batch_size=batch_size, **backend_options)
    raise BackendError(f"backend {backend!r} needs a built engine: run `mtm export trt` first")


def required_limits(explicit: ActionLimits | None, from_file: ActionLimits | None,
                    where: str | Path) -> ActionLimits:
    """The limits a loaded policy runs with: the file's narrowed by the caller's (never wider
    than the file's), or the caller's alone for a file without limits (refused without them)."""
    if explicit is not None and from_file is not None:
        try:
            return intersect_limits(from_file, explicit.low.tolist(), explicit.high.tolist())
        except ValueError as e:
            raise CheckpointError(where, "action_limits", f"the limits passed do not fit the file's: {e}") from None
    if explicit is not None:
        return explicit
    if from_file is None:
        raise CheckpointError(where, "action_limits", "missing: this model has no action limits; pass them "
                              "explicitly (Policy.load(..., limits=ActionLimits(low, high)))")
    return from_file


def verify_behaviour(backend: Backend, fingerprint: Mapping[str, Any] | None, where: str | Path) -> None:
    """Run the behavioural fingerprint through ``backend`` (within its ``output_tolerance``);
    on a refusal the backend is closed. No fingerprint (an unstamped file the caller chose to
    accept, or an in-memory checkpoint): nothing to check."""
    if fingerprint is None:
        return
    try:
        check_fingerprint(backend.run, backend.spec, fingerprint, backend.output_tolerance, where,
                          backend.batch_size)
    except CheckpointError:
        backend.close()
        raise


class Policy:
    def __init__(self, spec: TrajectorySpec, normaliser: Normaliser, backend: Backend,
                 limits: ActionLimits | None = None, mode: str = "bc",
                 metadata: Mapping[str, Any] | None = None) -> None:
        if ACTIONS not in spec:
            raise InputError("a Policy needs an 'actions' modality in the spec")
        if backend.spec != spec:
            raise InputError(f"backend spec ({backend.spec.describe()}) differs from the policy's ({spec.describe()})")
        self.spec, self.normaliser, self.backend = spec, normaliser, backend
        self.metadata = dict(metadata or {})
        aw = spec.width(ACTIONS)
        self.limits = limits if limits is not None else ActionLimits.symmetric(1e6, aw)  # no limits given: only finiteness is enforced
        if self.limits.width != aw:
            raise InputError(f"limits have width {self.limits.width}, the spec's actions have {aw}")
        self.buffer = TrajectoryBuffer(spec, normaliser)
        self.modes = tuple(m for m in CONTROL_MODES if m in M.available_modes(spec))
        self._mode_masks = {m: M.mode_mask(spec, m)[None] for m in self.modes}
        self._mask = np.zeros((1, spec.horizon, spec.num_modalities), np.float32)
        self._action = np.zeros(aw, np.float32)
        self._action_out = self._action.view()  # what act() returns: a read-only view, made once
        self._action_out.flags.writeable = False
        self._action_norm = np.zeros(aw, np.float32)
        self._a_slice = spec.slice(ACTIONS)
        self._goal: np.ndarray | None = None
        self._target_return: float | None = None
        self._rtg = 0.0
        self._rtg_norm = np.zeros(1, np.float32)
        self.mode = ""
        self.set_mode(mode)
        self.last_act_s = 0.0
        self.last_backend_s = 0.0

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, backend: str = "", mode: str = "bc",
             limits: ActionLimits | None = None, trust: Trust | None = None,
             **backend_options: Any) -> "Policy":
        """From a checkpoint directory, an ``.onnx`` file or an ``.engine`` file (the spec,
        normaliser and limits travel inside each). ``backend`` defaults to torch for a
        checkpoint, onnxruntime for .onnx, tensorrt for .engine. ``package://mtm_runtime/...``
        paths are found in the package's share directory (``mtm_runtime.package_paths``).

        Refused (``CheckpointError`` naming the file and field): a file whose integrity stamp
        does not match (``trust``: see ``mtm_runtime.integrity``; default from the environment),
        metadata out of bounds, a model without action limits unless ``limits`` is given, and a
        backend whose outputs miss the file's behavioural fingerprint."""
        p = package_paths.resolve(path)
        if p.is_dir():
            ckpt = load_checkpoint(p, trust=trust, verify_outputs=False)  # the backend runs the fingerprint
            return cls.from_checkpoint(ckpt, backend or "torch", mode, limits, **backend_options)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such checkpoint directory, .onnx or .engine file")
        source: Path | bytes = p
        if p.suffix == ".onnx":
            if not p.is_file():  # a FIFO or a link to /dev/zero is never read
                raise CheckpointError(p, "(file)", "not a regular file")
            source = p.read_bytes()  # read once: the backend runs the bytes that were verified
            meta, kind = read_onnx_metadata(p, trust, source), "onnx"
            backend = backend or "onnxruntime"
        elif p.suffix == ".engine":
            meta, kind = read_engine_sidecar(p, trust), "engine"
            backend = backend or "tensorrt"
        else:
            raise InputError(f"{p}: expected a checkpoint directory, a .onnx or a .engine file")
        spec, _cfg, norm, ck_limits, _prov = parse_metadata(meta, p)
        chosen = required_limits(limits, ck_limits, p)
        if source_kind(backend) != kind:
            raise BackendError(f"backend {backend!r} cannot run a {p.suffix} file; "
                               f"use a checkpoint directory for torch backends")
        be = backend_class(backend)(source, spec, **backend_options)
        if kind == "engine":
            be.output_tolerance = engine_output_tolerance(meta)
        verify_behaviour(be, meta.get("fingerprint"), p)
        return cls(spec, norm, be, chosen, mode, meta)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, backend: str = "torch", mode: str = "bc",
                        limits: ActionLimits | None = None, **backend_options: Any) -> "Policy":
        """A policy over ``ckpt`` (limits required as in ``load``; the backend is checked against
        the checkpoint's fingerprint when it has one)."""
        chosen = required_limits(limits, ckpt.action_limits, ckpt.meta_path)
        be = backend_for_checkpoint(ckpt, backend, **backend_options)
        verify_behaviour(be, ckpt.fingerprint, ckpt.meta_path)
        return cls(ckpt.spec, ckpt.normaliser, be, chosen, mode, ckpt.metadata())

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # ---- mode and conditioning ---------------------------------------------------------------
    def set_mode(self, mode: str, *, target_return: float | None = None, goal: np.ndarray | None = None) -> None:
        """Switch mode at run time (no reload). Invalid -> InputError, old mode kept."""
        if mode not in self.modes:
            raise InputError(f"mode {mode!r} is not available for this model; choose from {', '.join(self.modes)}")
        if target_return is not None:
            self.set_target_return(target_return)
        if goal is not None:
            self.set_goal(goal)
        self.mode = mode

    def set_target_return(self, target: float) -> None:
        """Return-to-go target (raw reward units) for ``rcbc``; takes effect from the next step."""
        if RETURNS not in self.spec:
            raise InputError("this model has no 'returns' modality")
        t = float(target)
        if not math.isfinite(t):
            raise InputError(f"target_return must be finite, got {target!r}")
        delta = t - (self._target_return if self._target_return is not None else t)
        self._target_return = t
        self._rtg = t if self.buffer.steps == 0 else self._rtg + delta

    def set_goal(self, goal: np.ndarray) -> None:
        if GOALS not in self.spec:
            raise InputError("this model has no 'goals' modality")
        g = self._check("goal", goal, self.spec.width(GOALS))
        self._goal = g.astype(np.float32).copy()
        self._goal_norm = self.normaliser.normalise(GOALS, self._goal)  # written every step

    def reset(self) -> None:
        """New episode: empty history, return-to-go back to the target."""
        self.buffer.reset()
        self._rtg = self._target_return if self._target_return is not None else 0.0

    # ---- the control step -------------------------------------------------------------------
    def act(self, state: np.ndarray, reward: float | None = None) -> np.ndarray:
        """One control step (module docstring): ``begin_step`` -> backend -> ``finish_step``."""
        t0 = time.perf_counter()
        x, mask = self.begin_step(state, reward)
        tb = time.perf_counter()
        y = self.backend.run(x, mask)
        self.last_backend_s = time.perf_counter() - tb
        a = self.finish_step(y[0, -1])
        self.last_act_s = time.perf_counter() - t0
        return a

    # The two halves of ``act`` are public so that ``PolicyBatch`` can step many policies through
    # one batched backend call with exactly this code; a caller must pair every ``begin_step``
    # with one ``finish_step`` (the buffer's newest step is waiting for its action).
    def begin_step(self, state: np.ndarray, reward: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3: validate, push the new step, build the mask. Returns ``(x [1, T, D],
        mask [1, T, M])``: arrays reused by the next call. ``InputError`` leaves everything as it was."""
        s = self._check("state", state, self.spec.width(STATES))
        if reward is not None and not math.isfinite(float(reward)):
            raise InputError(f"reward must be finite, got {reward!r}")
        if self.mode == "goal" and self._goal is None:
            raise InputError("goal mode needs a goal: call set_goal() first")
        if self.mode == "rcbc" and self._target_return is None:
            raise InputError("rcbc mode needs a target return: call set_target_return() first")
        if reward is not None and self.buffer.steps > 0:
            self._rtg -= float(reward)

        buf = self.buffer
        buf.begin_step()
        buf.write(STATES, s)
        if self._goal is not None:
            buf.write(GOALS, self._goal_norm, normalised=True)
        if RETURNS in self.spec and self._target_return is not None:
            self._rtg_norm[0] = self._rtg / self.normaliser.std[RETURNS][0]
            buf.write(RETURNS, self._rtg_norm, normalised=True)
        x, avail = buf.window()
        np.minimum(self._mode_masks[self.mode], avail, out=self._mask)
        return x, self._mask

    def finish_step(self, y_newest: np.ndarray) -> np.ndarray:
        """Steps 4-5: ``y_newest [D]`` is the backend's prediction at ``t = T-1`` (normalised);
        returns the clipped raw action (reused read-only array) after writing it to the history.
        ``InferenceError`` if it is not finite: the output array is zeroed, the history gets no action."""
        a = self._action
        np.copyto(self._action_norm, y_newest[self._a_slice])
        np.multiply(self._action_norm, self.normaliser.std[ACTIONS], out=a)
        np.add(a, self.normaliser.mean[ACTIONS], out=a)
        try:
            self.limits.clip(a, out=a)  # checks finiteness once (it raises before writing)
        except UnsafeCommandError:
            a.fill(0.0)
            raise InferenceError(f"backend {self.backend.name!r} returned a non-finite action; nothing was emitted") from None
        self.buffer.write(ACTIONS, a)
        return self._action_out

    # ---- ID / FD helpers (one window through the same backend) --------------------------------
    def infer_actions(self, states: np.ndarray) -> np.ndarray:
        """Inverse dynamics: ``states [T, S]`` (raw) -> actions ``[T-1, A]`` (raw) taking
        ``s[t] -> s[t+1]``. Does not touch the control buffer."""
        T = self.spec.horizon
        st = self._check("states", states, self.spec.width(STATES), leading=(T,))
        x = np.zeros((1, T, self.spec.packed_width), np.float32)
        x[0, :, self.spec.slice(STATES)] = self.normaliser.normalise(STATES, st)
        y = self.backend.run(x, M.id_mask(self.spec)[None])
        return self.normaliser.denormalise(ACTIONS, y[0, :-1, self._a_slice]).copy()

    def predict_next_state(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Forward dynamics: ``states [T-1, S]``, ``actions [T-1, A]`` (raw) -> the next state."""
        T = self.spec.horizon
        st = self._check("states", states, self.spec.width(STATES), leading=(T - 1,))
        ac = self._check("actions", actions, self.spec.width(ACTIONS), leading=(T - 1,))
        x = np.zeros((1, T, self.spec.packed_width), np.float32)
        x[0, :-1, self.spec.slice(STATES)] = self.normaliser.normalise(STATES, st)
        x[0, :-1, self._a_slice] = self.normaliser.normalise(ACTIONS, ac)
        y = self.backend.run(x, M.fd_mask(self.spec)[None])
        return self.normaliser.denormalise(STATES, y[0, -1, self.spec.slice(STATES)]).copy()

    def warmup(self, n: int = 10) -> None:
        """Run ``n`` steps on a zero state, then reset (first real step is not the slow one)."""
        goal, target = self._goal, self._target_return
        mode = self.mode
        if self.mode == "goal" and goal is None:
            self.mode = "bc"
        if self.mode == "rcbc" and target is None:
            self.mode = "bc"
        for _ in range(n):
            self.act(self.normaliser.mean[STATES])
        self.mode = mode
        self.reset()

    # ---- validation ----------------------------------------------------------------------------
    @staticmethod
    def _check(what: str, value: Any, width: int, leading: tuple[int, ...] = ()) -> np.ndarray:
        a = np.asarray(value)
        if a.shape != (*leading, width):
            raise InputError(f"{what} has shape {a.shape}, expected {(*leading, width)}")
        if a.dtype.kind not in "fiu":
            raise InputError(f"{what} must be numeric, got dtype {a.dtype}")
        if not all_finite(a):
            raise InputError(f"{what} contains NaN or Inf")
        return a
