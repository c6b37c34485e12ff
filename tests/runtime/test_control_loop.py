"""ControlLoop without ROS: every fault of docs/safety.md that belongs to the loop, driven by a
scripted policy and fake clocks (no sleeping, no timing asserts)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtm_runtime import policy_params as pp
from mtm_runtime import safety_contract as contract
from mtm_runtime.control_loop import ControlLoop
from mtm_runtime.loop_types import Command, Fault, FaultLog, LoopConfig
from mtm_runtime.spec import TrajectorySpec
from scripted_policy import ScriptedPolicy

RATE = 100.0          # P = 10 ms
P = 1.0 / RATE
MAX_RATE = 0.1        # per step
LOW, HIGH = [-0.5, -0.5], [0.5, 0.5]   # narrows the scripted policy's +-1
EPOCH_NS = 1_000_000_000_000


class Clock:
    """Monotonic seconds for ``now`` and ``act_clock``; ``ns()`` is the stamp clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t

    def ns(self) -> int:
        return EPOCH_NS + int(round(self.t * 1e9))


def make(**overrides: object) -> tuple[ControlLoop, ScriptedPolicy, Clock]:
    cfg = dict(rate_hz=RATE, stale_timeout=0.1, stale_reset_s=0.5, max_rate=MAX_RATE, fault_action="zeros",
               action_low=LOW, action_high=HIGH)
    cfg.update(overrides)
    policy, clock = ScriptedPolicy(state_width=3, action_width=2), Clock()
    policy.advance = clock.advance
    loop = ControlLoop(policy, LoopConfig(**cfg), clock_ns=clock.ns, act_clock=clock,  # type: ignore[arg-type]
                       faults=FaultLog(clock=clock))
    loop.activate(clock.t)
    return loop, policy, clock


class Chain:
    """Checks the invariant on every output: finite, inside the narrowed limits, within max_rate."""

    def __init__(self, loop: ControlLoop) -> None:
        self.loop = loop
        self.prev = loop.fault_action.action(None)   # the limiter starts from the resting fault action
        self.outputs: list[Command | Fault] = []

    def __call__(self, out: Command | Fault | None) -> Command | Fault | None:
        if out is not None:
            a = out.action
            assert np.all(np.isfinite(a)) and a.shape == (2,)
            assert self.loop.limits.contains(a), a
            assert np.all(np.abs(a - self.prev) <= MAX_RATE + 1e-6), (a, self.prev)
            self.prev = a.copy()
            self.outputs.append(out)
        return out

    def state(self, clock: Clock, s: list[float], dt: float = P, **kw: object) -> Command | Fault | None:
        clock.advance(dt)
        return self(self.loop.on_state(np.asarray(s), kw.pop("stamp", clock.ns()), clock.t, **kw))  # type: ignore[arg-type]

    def tick(self, clock: Clock, dt: float = P) -> Command | Fault | None:
        clock.advance(dt)
        return self(self.loop.on_tick(clock.t))


def test_config_is_checked_as_a_whole() -> None:
    with pytest.raises(ValueError) as e:
        LoopConfig(rate_hz=0.0, trigger="sometimes", fault_action="explode", stale_timeout=math.nan)
    for name in ("rate_hz", "trigger", "fault_action", "stale_timeout"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="safe_action"):
        ControlLoop(ScriptedPolicy(), LoopConfig(fault_action="safe", safe_action=(5.0, 5.0)))
    with pytest.raises(ValueError, match="override 'low'"):
        ControlLoop(ScriptedPolicy(), LoopConfig(action_low=(0.0, 0.0, 0.0)))


def test_commands_are_clipped_to_the_narrowed_limits_and_rate_limited() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    outs = [chain.state(clock, [0.9, -0.9, 0.0]) for _ in range(8)]
    assert all(isinstance(o, Command) for o in outs)
    firsts = [float(o.action[0]) for o in outs]  # type: ignore[union-attr]
    assert firsts == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5])  # ramp from zeros, then the limit
    assert outs[-1].action[1] == pytest.approx(-0.5)  # type: ignore[union-attr]
    assert outs[-1].stamp_ns == clock.ns() and outs[-1].arrival == clock.t  # type: ignore[union-attr]
    assert loop.stats.ticks == loop.stats.published == 8 and loop.stats.faults == 0
    assert loop.stats.act_latency.total == 8
    assert all(o.act_s == 0.0 for o in outs)  # type: ignore[union-attr]  # the fake act clock stands still
    policy.delay_s = 0.004
    out = chain.state(clock, [0.9, -0.9, 0.0])
    assert isinstance(out, Command) and out.act_s == pytest.approx(0.004)   # what the node subtracts from e2e


def test_inactive_loop_does_nothing() -> None:
    loop, policy, clock = make()
    loop.deactivate()
    assert loop.on_state(np.zeros(3), 1, 1.0) is None and loop.on_tick(1.0) is None
    assert policy.calls == [] and loop.safe_stop_commands() == []


def test_rejected_inputs_never_reach_the_policy() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    for bad in ([math.nan, 0.0, 0.0], [0.1, 0.2], [0.0, math.inf, 0.0], [0.1, 0.2, 0.3, 0.4]):
        assert chain.state(clock, bad) is None
    assert loop.stats.rejected_inputs == 4 and policy.calls == []
    assert "NaN/Inf" in loop.stats.last_fault_reason or "shape" in loop.stats.last_fault_reason
    assert [k for k, _ in loop.faults.active()] == ["rejected_input"]
    loop.reject("joint_states lacks joints ['j9']")  # what an adapter's conversion refuses
    assert loop.stats.rejected_inputs == 5
    assert isinstance(chain.state(clock, [0.2, 0.0, 0.0]), Command)  # recovery: the next valid state


def test_stamp_rules_for_stamped_inputs() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    assert isinstance(chain.state(clock, [0.1, 0.0, 0.0], stamp=EPOCH_NS + 500, stamped=True), Command)
    for stamp in (EPOCH_NS + 500, EPOCH_NS + 499):  # duplicate, out of order
        assert chain.state(clock, [0.1, 0.0, 0.0], stamp=stamp, stamped=True) is None
    assert "not after the previous one" in loop.stats.last_fault_reason and loop.stats.rejected_inputs == 2
    assert isinstance(chain.state(clock, [0.1, 0.0, 0.0], stamp=EPOCH_NS + 499), Command)  # unstamped: no rule
    # with max_state_age: too old / too far in the future vs the stamp clock
    loop, policy, clock = make(max_state_age=0.2, max_future_s=0.05)
    chain = Chain(loop)
    clock.advance(1.0)
    assert chain.state(clock, [0.1, 0.0, 0.0], dt=0.0, stamp=clock.ns() - int(0.3e9), stamped=True) is None
    assert "old (> max_state_age)" in loop.stats.last_fault_reason
    assert chain.state(clock, [0.1, 0.0, 0.0], dt=0.0, stamp=clock.ns() + int(0.1e9), stamped=True) is None
    assert "in the future" in loop.stats.last_fault_reason
    assert isinstance(chain.state(clock, [0.1, 0.0, 0.0], stamp=clock.ns() + int(0.04e9), stamped=True), Command)
    assert policy.calls and len(policy.calls) == 1


def test_a_deferred_state_is_checked_again_at_its_tick() -> None:
    """Fresh on arrival, deferred by the flood guard, too old (max_state_age) by the time a late
    tick comes: dropped, not acted on; a tick in time steps it."""
    loop, policy, clock = make(max_state_age=0.2, stale_timeout=0.5, stale_reset_s=1.0)
    chain = Chain(loop)
    for late, stepped in ((0.0, True), (0.25, False)):
        assert isinstance(chain.state(clock, [0.1, 0.0, 0.0], dt=P, stamp=clock.ns() + int(P * 1e9), stamped=True), Command)
        assert chain.state(clock, [0.2, 0.0, 0.0], dt=P / 10, stamp=clock.ns() + int(P * 1e8), stamped=True) is None
        assert loop.pending
        rejected, calls = loop.stats.rejected_inputs, len(policy.calls)
        out = chain.tick(clock, dt=P + late)
        assert isinstance(out, Command) if stepped else out is None, (late, out)
        assert len(policy.calls) == calls + stepped and not loop.pending
        assert loop.stats.rejected_inputs == rejected + (not stepped)
    assert "deferred state stamp is 0.26" in loop.stats.last_fault_reason and "(> max_state_age)" in loop.stats.last_fault_reason


def test_a_flood_is_deferred_to_the_next_tick() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    assert isinstance(chain.state(clock, [0.1, 0.0, 0.0]), Command)
    for i in range(5):  # 5 states within half a period: only the newest is stepped, at the tick
        assert chain.state(clock, [0.2 + 0.01 * i, 0.0, 0.0], dt=P / 10) is None
        assert loop.pending
    stamp = clock.ns()
    out = chain.tick(clock)
    assert isinstance(out, Command) and out.stamp_ns == stamp and not loop.pending
    assert len(policy.calls) == 2 and policy.calls[-1][0][0] == pytest.approx(0.24)
    assert chain.tick(clock) is None  # nothing pending, input fresh


def test_timer_trigger_steps_on_the_newest_state() -> None:
    loop, policy, clock = make(trigger="timer")
    chain = Chain(loop)
    assert chain.state(clock, [0.1, 0.0, 0.0], dt=P / 3) is None
    assert chain.state(clock, [0.3, 0.0, 0.0], dt=P / 3) is None
    arrival = clock.t
    out = chain.tick(clock, dt=P / 3)
    assert isinstance(out, Command) and out.arrival == arrival and len(policy.calls) == 1
    assert policy.calls[0][0][0] == pytest.approx(0.3)
    assert chain.tick(clock, dt=P / 3) is None


def test_stale_input_fault_every_period_then_recovery_and_new_episode() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    for _ in range(4):
        chain.state(clock, [0.4, 0.0, 0.0])
    assert chain.tick(clock, dt=0.05) is None  # not stale yet
    faults = [chain.tick(clock, dt=0.03) for _ in range(4)]  # 0.08 .. 0.17 s without a state
    assert faults[0] is None and all(isinstance(f, Fault) and f.kind == "stale_input" for f in faults[1:])
    assert [float(f.action[0]) for f in faults[1:]] == pytest.approx([0.3, 0.2, 0.1])  # ramp to zeros
    assert faults[-1].stamp_ns == clock.ns() and faults[1].stamp_ns < faults[2].stamp_ns  # the stamp clock
    assert loop.stats.stale_ticks == 3 and loop.stats.faults == 3
    assert "stale_input" in [k for k, _ in loop.faults.active()]
    # the fault says whether any state came in at all (none: look at the topic, not the source)
    assert loop.stats.states_in == 4 and "4 states in since activation" in loop.stats.last_fault_reason
    # a gap below stale_reset_s: same episode
    resets = policy.resets
    assert isinstance(chain.state(clock, [0.4, 0.0, 0.0]), Command) and policy.resets == resets
    # a gap above stale_reset_s: a new episode, and its first act gets no reward
    loop.on_reward(1.0)
    for _ in range(70):
        chain.tick(clock)
    assert loop.watchdog.stale(clock.t)
    loop.on_reward(2.0)
    out = chain.state(clock, [0.4, 0.0, 0.0])
    assert isinstance(out, Command)
    assert policy.resets == resets + 1 and loop.stats.episode_resets == 1 and policy.calls[-1][1] is None


def test_rewards_accumulate_between_steps() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    loop.on_reward(5.0)
    chain.state(clock, [0.1, 0.0, 0.0])
    loop.on_reward(1.0)
    loop.on_reward(math.nan)  # ignored
    loop.on_reward(2.0)
    chain.state(clock, [0.1, 0.0, 0.0])
    chain.state(clock, [0.1, 0.0, 0.0])
    assert [c[1] for c in policy.calls] == [None, 3.0, None]


def test_reset_starts_a_new_episode_and_voids_old_stamps() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    chain.state(clock, [0.1, 0.0, 0.0], stamp=EPOCH_NS + 10**9, stamped=True)
    resets = policy.resets
    loop.reset("test")
    assert policy.resets == resets + 1 and loop.stats.episode_resets == 1
    assert isinstance(chain.state(clock, [0.1, 0.0, 0.0], stamp=EPOCH_NS + 5, stamped=True), Command)


def test_overrun_act_error_and_unsafe_output_give_the_fault_action() -> None:
    loop, policy, clock = make(fault_action="hold")
    chain = Chain(loop)
    for _ in range(3):
        chain.state(clock, [0.9, 0.0, 0.0])   # 0.1, 0.2, 0.3
    cases = (("overrun", "overruns", lambda: setattr(policy, "delay_s", 2 * P)),
             ("act_error", "act_errors", lambda: setattr(policy, "fail", True)),
             ("unsafe_output", "act_errors", lambda: setattr(policy, "output", np.array([math.nan, 0.0]))),
             ("unsafe_output", "act_errors", lambda: setattr(policy, "output", np.zeros(3, np.float32))))
    for kind, counter, arm in cases:
        before = getattr(loop.stats, counter)
        arm()
        out = chain.state(clock, [0.9, 0.0, 0.0])
        assert isinstance(out, Fault) and out.kind == kind, (kind, out)
        assert getattr(loop.stats, counter) == before + 1
        assert out.action[0] == pytest.approx(0.3)  # hold: the last command
        assert kind in [k for k, _ in loop.faults.active()]
        policy.delay_s, policy.fail, policy.output = 0.0, False, None
        rec = chain.state(clock, [0.9, 0.0, 0.0])  # recovery: the next step that succeeds
        assert isinstance(rec, Command) and rec.action[0] == pytest.approx(0.4)
        chain.state(clock, [0.3, 0.0, 0.0])  # back to 0.3
    assert loop.stats.overruns == 1 and loop.stats.act_errors == 3 and loop.stats.faults == 4
    levels = [contract.CONTRACT[k].level for k, _ in loop.faults.active()]
    assert levels[0] == "ERROR"  # worst first


@pytest.mark.parametrize("kind,safe,target", [("zeros", (), 0.0), ("safe", (-0.2, 0.1), -0.2), ("hold", (), 0.5)])
def test_fault_actions_are_rate_limited(kind: str, safe: tuple[float, ...], target: float) -> None:
    loop, policy, clock = make(fault_action=kind, safe_action=safe)
    chain = Chain(loop)
    for _ in range(12):
        chain.state(clock, [0.9, 0.0, 0.0])   # reaches 0.5 (a fault at start ramps from the resting action)
    policy.fail = True
    outs = [chain.state(clock, [0.9, 0.0, 0.0]) for _ in range(10)]
    assert all(isinstance(o, Fault) for o in outs)
    assert outs[-1].action[0] == pytest.approx(target)  # type: ignore[union-attr]


def test_shutdown_ramp() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    for _ in range(6):
        chain.state(clock, [0.9, 0.0, 0.0])
    ramp = loop.safe_stop_commands()
    for out in ramp:
        chain(out)
    assert [float(f.action[0]) for f in ramp[:5]] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0], abs=1e-6)
    assert ramp[-1].action.tolist() == [0.0, 0.0] and len(ramp) <= 6  # ends on the fault action exactly
    assert all(f.kind == "shutdown" for f in ramp) and loop.stats.published == 6 + len(ramp)
    assert "shutdown" in [k for k, _ in loop.faults.active()]
    loop, policy, clock = make(max_rate=0.0)  # no rate limit: one command, the fault action
    for _ in range(3):
        loop.on_state(np.array([0.9, 0.0, 0.0]), 1, clock.advance(P))
    assert [f.action.tolist() for f in loop.safe_stop_commands()] == [[0.0, 0.0]]
    loop, policy, clock = make(max_rate=1e-4)  # a ramp that does not fit: bounded
    loop.rate_limiter.reset(np.array([0.5, 0.5]))
    loop.last_command = np.array([0.5, 0.5], np.float32)
    assert len(loop.safe_stop_commands()) == contract.SHUTDOWN_RAMP_MAX_STEPS


def test_fault_log_holds_a_fault_for_fault_hold_s() -> None:
    clock = Clock()
    heard: list[str] = []
    log = FaultLog(on_note=lambda k, d: heard.append(k), clock=clock)
    log.note("overrun", "slow")
    log.note("act_error", "boom")
    assert [k for k, _ in log.active()] == ["act_error", "overrun"] and heard == ["overrun", "act_error"]
    clock.advance(contract.FAULT_HOLD_S + 0.01)
    assert log.active() == []
    log.note("overrun", "again")
    log.clear("overrun")
    assert log.active() == []


def test_parameter_update_is_checked_as_a_whole_before_it_is_applied() -> None:
    """The atomic-set rule without ROS: one bad value refuses the set and changes nothing."""
    policy = ScriptedPolicy(state_width=3, action_width=2)
    policy.spec = TrajectorySpec.create(4, states=3, actions=2, returns=1, goals=2)
    policy.modes = ("bc", "rcbc", "goal")
    current = {name: prm.default for name, prm in pp.PARAMETERS.items()}
    assert pp.update({"mask_mode": "rcbc", "goal": [0.1, 0.2, 0.3]}, current, policy) == (
        "goal", "goal has shape (3,), expected (2,)")
    assert policy.mode == "bc" and policy.target_return is None
    assert pp.update({"mask_mode": "rcbc", "target_return": 7.0}, current, policy) is None
    assert policy.mode == "rcbc" and policy.target_return == 7.0
    name, reason = pp.update({"mask_mode": "bc", "control_rate_hz": 10.0}, current, policy)  # type: ignore[misc]
    assert name == "control_rate_hz" and "configure" in reason and policy.mode == "rcbc"
    assert pp.update({"trigger": "sometimes"}, current)[1] == "trigger must be one of: state, timer, got 'sometimes'"


def test_the_loop_modules_import_no_ros() -> None:
    code = ("import sys, mtm_runtime.control_loop, mtm_runtime.policy_params; "
            "print([m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl_interfaces', 'std_msgs')])")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout
    assert out.strip() == "[]"


# ---- saturation (issue: commands pinned at a limit are a fault) -------------------------------
def test_saturation_is_reported_after_saturation_s_and_clears_off_the_limit() -> None:
    loop, policy, clock = make(saturation_s=0.045)
    chain = Chain(loop)
    for _ in range(5):                     # pinned 0-40 ms: within saturation_s, nothing reported
        assert isinstance(chain.state(clock, [9.0, 0.0, 0.0]), Command)
    assert loop.stats.saturated_steps == 0 and "saturated" not in dict(loop.faults.active())
    for _ in range(3):                     # pinned 50-70 ms: reported, the policy's command still sent
        out = chain.state(clock, [9.0, 0.0, 0.0])
        assert isinstance(out, Command) and out.action[0] == HIGH[0]
    assert loop.stats.saturated_steps == 3
    kind, detail = loop.faults.active()[0]
    assert kind == "saturated" and "dims [0]" in detail and "saturation_s 0.045" in detail
    assert loop.stats.counters()["saturated_steps"] == 3
    out = chain.state(clock, [0.1, 0.0, 0.0])  # off the limit: the run ends
    assert isinstance(out, Command)
    for _ in range(5):                     # a new run starts its own clock
        chain.state(clock, [-9.0, 0.0, 0.0])
    assert loop.stats.saturated_steps == 3


def test_saturation_fault_answers_with_the_fault_action() -> None:
    loop, policy, clock = make(saturation_s=0.02, saturation_fault=True)
    chain = Chain(loop)
    outs = [chain.state(clock, [0.0, -5.0, 0.0]) for _ in range(6)]
    assert all(isinstance(o, Command) for o in outs[:3])
    faults = [o for o in outs if isinstance(o, Fault)]
    assert faults and all(f.kind == "saturated" for f in faults)
    assert abs(faults[-1].action[1]) < abs(outs[2].action[1])   # ramping to the fault action (zeros)
    assert isinstance(chain.state(clock, [0.0, 0.2, 0.0]), Command)   # recovers on the next step off it


def test_saturation_off_by_default() -> None:
    loop, policy, clock = make()
    chain = Chain(loop)
    for _ in range(50):
        chain.state(clock, [9.0, 9.0, 0.0])
    assert loop.stats.saturated_steps == 0 and not loop.faults.active()


def test_saturation_parameters_reach_the_loop() -> None:
    values = {name: prm.default for name, prm in pp.PARAMETERS.items()}
    values.update(saturation_s=0.5, saturation_fault=True)
    cfg = pp.loop_config(values)
    assert cfg.saturation_s == 0.5 and cfg.saturation_fault is True
    assert pp.value_problem("saturation_s", -1.0)
    with pytest.raises(ValueError, match="saturation_s"):
        LoopConfig(saturation_s=float("nan"))
