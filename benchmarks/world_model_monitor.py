"""World-model monitor: does it flag a changed robot within 0.2 s, and stay quiet otherwise? (JSON out)

    python benchmarks/world_model_monitor.py MODEL --task hopper --json out.json

MODEL: a checkpoint trained on the task (T >= 2, e.g. ``mtm train --horizon 8 --masks
auto,chunk,chunk,bc``). The policy runs through ``ChunkLoop`` (sync, chunk 1 = BC, monitor on:
one batched forward of the BC row and the forward-dynamics row per step) in real MuJoCo:

1. calibration: ``--calibrate`` nominal episodes (own seeds); threshold = ``--margin`` x the
   largest alarm level seen (the RMS normalised residual averaged over ``--average`` steps) once
   the window holds T steps;
2. nominal: ``--nominal`` further episodes with that threshold: any alarm is a false alarm;
3. faults, ``--faulty`` episodes each, injected at step ``--fault-step`` into the simulator's
   ``MjModel``: every link mass x1.5; every actuator gear x0.5; one joint locked (its position
   and velocity held at the value of the fault step, every step). Detection time = the first
   alarm after injection (``persist`` steps over the threshold), in seconds of simulated time.

Also: the monitor's cost per step (``plan`` time with the monitor vs without, same model, same
states: the batch-of-two forward against the batch-of-one).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import emit_json, machine  # noqa: E402

FAULTS = ("mass_x1.5", "gain_x0.5", "joint_locked")


def inject(env: Any, fault: str, joint: int) -> Any:
    """Apply ``fault`` to the live MjModel; returns a per-step hook (joint lock) or None."""
    u = env.unwrapped
    if fault == "mass_x1.5":
        u.model.body_mass[1:] *= 1.5
    elif fault == "gain_x0.5":
        u.model.actuator_gear[:, 0] *= 0.5
    elif fault == "joint_locked":
        jid = int(u.model.actuator_trnid[joint, 0])
        qa, va = int(u.model.jnt_qposadr[jid]), int(u.model.jnt_dofadr[jid])
        held = float(u.data.qpos[qa])

        def lock() -> None:
            u.data.qpos[qa], u.data.qvel[va] = held, 0.0
        return lock
    return None


def episode(loop: Any, task: Any, seed: int, fault: str | None, fault_step: int, joint: int) -> dict[str, Any]:
    from mtm_runtime.loop_types import Command, Fault

    env = task.make_env()
    obs, _ = env.reset(seed=seed)
    loop.reset("episode", from_rest=True)
    period = 1.0 / task.robot.rate_hz
    scores, alarm_step, hook, steps = [], None, None, 0
    try:
        for t in range(task.max_episode_steps if hasattr(task, "max_episode_steps") else 1000):
            if fault is not None and t == fault_step:
                hook = inject(env, fault, joint)
            state = task.split_observation(obs)["states"]
            out = loop.on_state(np.asarray(state, np.float32), 0, (t + 0.5) * period)
            a = out.action if isinstance(out, (Command, Fault)) else np.zeros(loop.limits.width, np.float32)
            scores.append(loop.monitor.last_level)
            if loop.monitor.alarm and alarm_step is None and t >= loop.policy.spec.horizon and (fault is None or t >= fault_step):
                alarm_step = t
            obs, _r, term, trunc, _ = env.step(a)
            if hook is not None:
                hook()
                env.unwrapped.data.qacc[:] = 0.0
            steps = t + 1
            if term or trunc:
                break
    finally:
        env.close()
    warm = loop.policy.spec.horizon  # scores once the window holds a full history
    return {"seed": seed, "fault": fault, "steps": steps, "max_score": float(np.max(scores[warm:] or [0.0])),
            "alarm_step": alarm_step, "period_s": period}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--task", default="hopper")
    ap.add_argument("--calibrate", type=int, default=10)
    ap.add_argument("--nominal", type=int, default=20)
    ap.add_argument("--faulty", type=int, default=10)
    ap.add_argument("--fault-step", type=int, default=100)
    ap.add_argument("--margin", type=float, default=1.5)
    ap.add_argument("--persist", type=int, default=3)
    ap.add_argument("--average", type=int, default=16, help="steps the alarm level is averaged over")
    ap.add_argument("--joint", type=int, default=0, help="actuator whose joint is locked")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from mtm_runtime.chunk_loop import ChunkConfig, ChunkLoop
    from mtm_runtime.loop_types import LoopConfig
    from mtm_runtime.policy import Policy
    from mtm_runtime.sim.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(args.task)
    cfg = LoopConfig(rate_hz=task.robot.rate_hz, stale_timeout=10.0, stale_reset_s=0.0)

    def make(threshold: float) -> ChunkLoop:
        pol = Policy.load(args.model, batch_size=2)
        loop = ChunkLoop(pol, cfg, ChunkConfig(monitor=True, monitor_threshold=threshold, monitor_persist=args.persist,
                                               monitor_average=args.average), threaded=False)
        loop.activate(0.0)
        return loop

    t_start = time.time()
    cal = [episode(make(0.0), task, 50_000 + i, None, 0, 0) for i in range(args.calibrate)]
    threshold = args.margin * max(e["max_score"] for e in cal)
    loop = make(threshold)
    nominal = [episode(loop, task, 60_000 + i, None, 0, 0) for i in range(args.nominal)]
    faults: dict[str, Any] = {}
    for f in FAULTS:
        eps = [episode(loop, task, 70_000 + i, f, args.fault_step, args.joint) for i in range(args.faulty)]
        det = [(e["alarm_step"] - args.fault_step) * e["period_s"] if e["alarm_step"] is not None else None for e in eps]
        within = sum(1 for d in det if d is not None and d <= 0.2)
        faults[f] = {"detected_within_0.2s": within, "episodes": len(eps),
                     "detection_s": [None if d is None else round(d, 4) for d in det],
                     "episodes_shorter_than_fault_step": sum(e["steps"] <= args.fault_step for e in eps)}
    # the monitor's cost: plan time with the batch of two vs one, same model, same state stream
    cost = {}
    for rows in (1, 2):
        pol = Policy.load(args.model, batch_size=rows)
        lp = ChunkLoop(pol, cfg, ChunkConfig(chunk=1, monitor=rows == 2), threaded=False)
        lp.activate(0.0)
        rng = np.random.default_rng(0)
        for k in range(2000):
            lp.on_state(rng.normal(size=task.state_dim).astype(np.float32), 0, (k + 0.5) * lp.period_s)
        s = lp.planner.latency.summary()
        cost["monitor" if rows == 2 else "no_monitor"] = {"plan_p50_ms": round(s.p50 * 1e3, 4), "plan_p99_ms": round(s.p99 * 1e3, 4)}
    cost["added_p50_ms"] = round(cost["monitor"]["plan_p50_ms"] - cost["no_monitor"]["plan_p50_ms"], 4)
    false_alarms = sum(e["alarm_step"] is not None for e in nominal)
    result = {"benchmark": "world_model_monitor", "machine": machine(), "model": args.model, "task": args.task,
              "threshold": round(threshold, 4), "margin": args.margin, "persist": args.persist, "average": args.average,
              "calibration_max_scores": [round(e["max_score"], 4) for e in cal],
              "nominal": {"episodes": len(nominal), "false_alarms": false_alarms,
                          "max_scores": [round(e["max_score"], 4) for e in nominal]},
              "faults": faults, "cost_per_step": cost, "wall_s": round(time.time() - t_start, 1),
              "targets": {"no alarm in nominal": false_alarms == 0,
                          **{f"{f} flagged within 0.2 s in >= 9/10": v["detected_within_0.2s"] >= 9 for f, v in faults.items()}}}
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
