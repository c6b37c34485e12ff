"""Action chunks from masks: the masks as documented, the planner's window, the stream, the
world-model monitor, and the chunked / async loop under a stalled model (fake clocks, a real model)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from mtm_runtime import masks as M
from mtm_runtime.backends.torch_backend import TorchBackend
from mtm_runtime.chunk_loop import ChunkConfig, ChunkLoop
from mtm_runtime.chunking import ChunkPlanner, ChunkStream, WorldModelMonitor, interpolate
from mtm_runtime.loop_types import Command, Fault, FaultLog, LoopConfig
from mtm_runtime.model import MTMConfig, build_model
from mtm_runtime.normalise import Normaliser
from mtm_runtime.policy import InputError, Policy
from mtm_runtime.safety import ActionLimits
from mtm_runtime.spec import TrajectorySpec

SPEC = TrajectorySpec.create(8, states=3, actions=2, returns=1)
CFG = MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2)
LIMITS = ActionLimits(np.array([-0.5, -0.5]), np.array([0.5, 0.5]))


class RecordingBackend(TorchBackend):
    """The real torch model; keeps a copy of what each call was given."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.gate: threading.Event | None = None  # set: runs; cleared: the model thread stalls

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait()
        self.calls.append((x.copy(), mask.copy()))
        return super().run(x, mask)


def policy(rows: int = 1) -> Policy:
    torch.manual_seed(0)
    norm = Normaliser(SPEC, {"states": np.array([1.0, 2.0, 3.0])}, {"states": np.array([2.0, 2.0, 2.0])})
    be = RecordingBackend(build_model(SPEC, CFG), batch_size=rows, warmup=0)
    return Policy(SPEC, norm, be, LIMITS)


# ---- masks ------------------------------------------------------------------------------------
def test_chunk_masks_render_as_the_docstring_shows() -> None:
    spec = TrajectorySpec.create(8, states=1, actions=1)
    assert M.render(spec, M.chunk_mask(spec, 4)) == "states  # # # # # . . .\nactions # # # # . . . ."
    assert M.render(spec, M.chunk_mask(spec, 4, committed=1)) == "states  # # # # # . . .\nactions # # # # # . . ."
    doc = M.chunk_mask.__doc__ or ""
    assert "states  # # # # # . . .           states  # # # # # . . ." in doc
    assert "actions # # # # . . . .           actions # # # # # . . ." in doc
    np.testing.assert_array_equal(M.chunk_mask(SPEC, 1), M.bc_mask(SPEC))
    rc = M.chunk_mask(SPEC, 3, 0, "rcbc")
    np.testing.assert_array_equal(rc[:, SPEC.index("returns")], [1] * 6 + [0] * 2)
    for bad in (dict(k=0), dict(k=9), dict(k=3, committed=3), dict(k=3, base="id")):
        with pytest.raises(M.MaskError):
            M.chunk_mask(SPEC, **bad)  # type: ignore[arg-type]


def test_training_covers_every_chunk_and_prefix() -> None:
    """The ``chunk`` training kind draws every (k, committed) the runtime can ask for."""
    rng = np.random.default_rng(0)
    masks = M.sample_training_masks(SPEC, 4000, rng, ("chunk",))
    seen = set()
    for m in masks:
        k = SPEC.horizon - int(m[:, SPEC.index("states")].sum()) + 1
        d = int(m[:, SPEC.index("actions")].sum()) - (SPEC.horizon - k)
        base = "rcbc" if m[:, SPEC.index("returns")].any() else "bc"
        np.testing.assert_array_equal(m, M.chunk_mask(SPEC, k, d, base))
        seen.add((k, d))
    assert seen == {(k, d) for k in range(1, SPEC.horizon) for d in range(k)}


# ---- planner ---------------------------------------------------------------------------------
def test_planner_window_commits_and_limits() -> None:
    pol = policy()
    planner = ChunkPlanner(pol, chunk=4)
    be = pol.backend
    states = [np.array([1.0 + 2 * t, 2.0, 3.0]) for t in range(6)]  # normalised first dim == t
    executed = None
    for t, s in enumerate(states):
        committed = np.array([[0.25, -0.25]], np.float32) if t == 5 else None
        plan = planner.plan(s, executed=executed, committed=committed)
        assert plan.actions.shape == (4, 2) and np.all(np.abs(plan.actions) <= 0.5)
        executed = plan.actions[0]
    x, m = be.calls[-1]
    p = SPEC.horizon - 4
    s_col, a_col = SPEC.index("states"), SPEC.index("actions")
    np.testing.assert_allclose(x[0, :p + 1, 0], np.arange(1, 6))          # newest state at the present p
    np.testing.assert_array_equal(m[0, :, s_col], [1, 1, 1, 1, 1, 0, 0, 0])  # steps 1..5, the future hidden
    np.testing.assert_array_equal(m[0, :, a_col], [1, 1, 1, 1, 1, 0, 0, 0])  # played actions + the committed one
    np.testing.assert_allclose(plan.actions[0], [0.25, -0.25])              # committed kept exactly
    with pytest.raises(InputError):
        planner.plan(states[0], committed=np.zeros((4, 2)))                 # nothing left to plan
    with pytest.raises(InputError, match="horizon"):
        ChunkPlanner(pol, chunk=9)
    with pytest.raises(InputError, match="batch size 2"):
        ChunkPlanner(pol, chunk=4, monitor=True)


def test_monitor_row_is_forward_dynamics_of_the_reported_state() -> None:
    pol = policy(rows=2)
    planner = ChunkPlanner(pol, chunk=4, monitor=True)
    plan = planner.plan(np.zeros(3))
    for _ in range(3):
        assert plan.residual is None  # the window does not hold a full history yet
        plan = planner.plan(np.zeros(3), executed=plan.actions[0])
    assert plan.residual is None
    plan = planner.plan(np.ones(3), executed=plan.actions[0])
    assert plan.residual is not None and plan.residual.shape == (3,)
    x, m = pol.backend.calls[-1]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(m[1], np.minimum(M.fd_mask(SPEC, 4), m[1]))
    assert m[1][4, SPEC.index("states")] == 0 and m[1][3, SPEC.index("actions")] == 1
    y = pol.backend.run(x, m)
    np.testing.assert_allclose(plan.residual, y[1, 4, :3] - x[0, 4, :3], rtol=1e-5, atol=1e-6)


def test_world_model_monitor_alarm_and_recovery() -> None:
    mon = WorldModelMonitor(2, threshold=1.0, persist=3)
    for _ in range(10):
        assert not mon.observe(np.array([0.1, 0.2]))
    assert not mon.observe(np.array([3.0, 0.0])) and not mon.observe(np.array([3.0, 0.0]))
    assert mon.observe(np.array([3.0, 0.0]))                   # third step over: alarm
    assert mon.observe(np.array([0.1, 0.0])) and mon.observe(np.array([0.1, 0.0]))
    assert not mon.observe(np.array([0.1, 0.0]))               # three under: cleared
    r = mon.report()
    assert r.alarms == 1 and r.steps == 16 and r.worst_dim == 0 and r.p99 > r.p50
    assert WorldModelMonitor(2).observe(np.array([9.0, 9.0])) is False  # threshold 0: report only
    avg = WorldModelMonitor(1, threshold=1.0, persist=1, average=4)
    for _ in range(4):
        avg.observe(np.array([0.2]))
    assert not avg.observe(np.array([3.0]))     # one spike: the 4-step mean (0.9) stays under
    assert avg.observe(np.array([3.0]))         # a persistent bias rises above it (1.6)


def test_stream_never_rewrites_a_played_step() -> None:
    st = ChunkStream(1)
    st.install(0, np.array([[0.0], [1.0], [2.0]]))
    assert st.at(0)[0] == 0.0 and st.at(1)[0] == 1.0
    assert st.install(1, np.array([[9.0], [8.0], [7.0]])) == 2   # step 1 was played
    assert st.at(1)[0] == 1.0 and st.at(2)[0] == 8.0 and st.at(3)[0] == 7.0 and st.at(4) is None
    np.testing.assert_array_equal(st.actions(1, 5)[:, 0], [1.0, 8.0, 7.0])
    out = np.zeros(1)
    assert interpolate(np.array([1.0]), np.array([3.0]), 0.25, out)[0] == 1.5


# ---- the loop ----------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_async_loop_stalled_model_gives_the_fault_action_within_the_bound() -> None:
    """Model 50 Hz, commands 1 kHz, chunk 4 (a chunk spans 80 ms): the model stops planning at
    step 10; every tick after the newest chunk's state is older than max_chunk_age_s is the
    fault action, inside the limits; planning again recovers."""
    pol, clock = policy(), Clock()
    cfg = LoopConfig(rate_hz=1000.0, stale_timeout=1.0, fault_action="zeros", max_rate=0.05)
    chunk = ChunkConfig(mode="async", chunk=4, model_rate_hz=50.0, committed=1, max_chunk_age_s=0.05)
    loop = ChunkLoop(pol, cfg, chunk, act_clock=clock, faults=FaultLog(clock=clock), threaded=False)
    loop.activate(0.0)
    assert loop.async_planner is not None
    stalled_at, outs = 0.2, []
    for tick in range(600):
        clock.t = now = tick * 1e-3
        answered = loop.on_state(np.array([np.sin(now), 2.0, 3.0]), 0, now)  # trigger: state answers at once
        if now >= stalled_at:
            loop.async_planner.step_once = lambda now: None  # type: ignore[method-assign]
        if 0.45 <= now:
            del loop.async_planner.step_once                 # the model thread is back
        outs.append((now, answered or loop.on_tick(now)))
    for _, o in outs:
        if isinstance(o, (Command, Fault)):
            assert np.all(np.isfinite(o.action)) and np.all(np.abs(o.action) <= 0.5)
    faults = [t for t, o in outs if isinstance(o, Fault) and o.kind == "stale_chunk"]
    last_state = stalled_at + 1e-3  # the last plan: step 10, from the state answered at 200 ms
    assert faults and faults[0] <= last_state + 0.05 + 2e-3 and faults[0] >= stalled_at
    assert all(isinstance(o, Fault) for t, o in outs if faults[0] <= t < 0.45)
    assert isinstance(outs[-1][1], Command)  # recovered
    assert outs[-1][1].act_s is None  # a streamed step ran no act(): the node records no beyond-act time for it
    assert loop.stats.stale_chunks == len(faults)


def test_async_loop_real_thread_stall_and_recovery() -> None:
    """The model on a real thread; its backend blocks: the loop keeps commanding (the fault
    action) and reports stale_chunk; when the backend returns, policy commands resume."""
    pol = policy()
    gate = threading.Event()
    gate.set()
    pol.backend.gate = gate  # type: ignore[attr-defined]
    cfg = LoopConfig(rate_hz=500.0, stale_timeout=1.0, fault_action="zeros")
    loop = ChunkLoop(pol, cfg, ChunkConfig(mode="async", chunk=4, model_rate_hz=100.0, max_chunk_age_s=0.1))
    loop.activate(time.monotonic())
    kinds: list[str] = []

    def run_until(phase: str, done: object, limit_s: float = 20.0) -> None:
        """Tick (500 Hz nominal) until ``done()``; the phases end on what happened, not on time."""
        t_end = time.monotonic() + limit_s
        while not done() and time.monotonic() < t_end:  # type: ignore[operator]
            now = time.monotonic()
            o = loop.on_state(np.array([0.5, 2.0, 3.0]), 0, now) or loop.on_tick(now)
            if isinstance(o, (Command, Fault)):
                assert np.all(np.abs(o.action) <= 0.5)
                kinds.append(f"{phase}:{o.kind if isinstance(o, Fault) else 'cmd'}")
            time.sleep(0.002)
        assert done(), f"phase {phase} did not finish in {limit_s} s: {kinds[-5:]}"  # type: ignore[operator]

    try:
        run_until("run", lambda: kinds.count("run:cmd") >= 20)
        gate.clear()  # the model thread blocks inside the backend
        run_until("stall", lambda: "stall:stale_chunk" in kinds)
        gate.set()
        run_until("again", lambda: kinds[-20:] == ["again:cmd"] * 20)
    finally:
        gate.set()
        loop.deactivate()
    assert loop.async_planner is not None and loop.async_planner.plans > 10


def test_sync_chunk_loop_plays_the_chunk_between_plans() -> None:
    pol = policy()
    loop = ChunkLoop(pol, LoopConfig(rate_hz=50.0), ChunkConfig(chunk=4, replan_every=4), threaded=False,
                     act_clock=Clock())  # a fake clock: a plan is never an overrun on a busy machine
    loop.activate(0.0)
    cmds = [loop.on_state(np.array([0.1 * t, 2.0, 3.0]), 0, t * 0.02) for t in range(8)]
    assert all(isinstance(c, Command) for c in cmds)
    assert len(pol.backend.calls) == 2  # type: ignore[attr-defined]  # steps 0 and 4 plan
    assert loop.planner.step == 7     # every state entered the history
    with pytest.raises(ValueError, match="replan_every"):
        ChunkConfig(chunk=2, replan_every=3)
    with pytest.raises(ValueError, match="async mode needs chunk"):
        ChunkConfig(mode="async")
