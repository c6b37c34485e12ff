"""``mtm rollout --target sim|serial --episodes N -o DIR``: run N episodes through the node set of
``mtm launch`` (``launch_description.describe``: each node its own process) and record them.

Writes ``DIR/rollout.mcap`` (the closed-loop topics), ``DIR/summary.json`` (episodes, scores,
the policy's latency diagnostics) and ``DIR/logs/<node>.log``. ``sim``: the MuJoCo bridge stops
after N episodes. ``serial``: the serial bridge has no episodes, so the recording lasts
``N * episode_steps / rate`` seconds (pass the port etc. with ``--params-file``, section
``mtm_serial_bridge``). Compare two rollouts with ``mtm compare-rollouts``; turn one into a
dataset with ``mtm import-mcap``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtm_runtime.arg_types import at_least

BUNDLED_MODEL = Path(__file__).resolve().parents[2] / "models" / "reacher_embedded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=("sim", "serial"), default="sim")
    parser.add_argument("--episodes", type=at_least(1), default=3)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.add_argument("--model", default="", help=f"checkpoint / .onnx (default: {BUNDLED_MODEL} if present)")
    parser.add_argument("--backend", default="", help="torch | onnxruntime | ... (default: the node's)")
    parser.add_argument("--task", default="reacher", help="benchmark task, Gymnasium id or robot file (with sim.env / sim.mjcf)")
    parser.add_argument("--mode", default="", help="mask mode (default: goal for goal tasks, else bc)")
    parser.add_argument("--rate", type=float, default=0.0, help="control rate in Hz (default: the task's 1/dt)")
    parser.add_argument("--sim-mode", choices=("realtime", "lockstep"), default="realtime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params-file", default="", help="extra ROS parameters (sections mtm_policy, mtm_sim_bridge, "
                                                         "mtm_serial_bridge); merged under this command's")
    parser.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (0 = auto)")


def resolve_model(model: str) -> str:
    if model:
        return model
    if BUNDLED_MODEL.is_dir():
        return str(BUNDLED_MODEL)
    raise FileNotFoundError(f"no --model given and no bundled model at {BUNDLED_MODEL}")


def _extra_params(path: str) -> tuple[dict, dict]:
    if not path:
        return {}, {}
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    pol = (doc.get("mtm_policy") or {}).get("ros__parameters", {})
    br = (doc.get("mtm_sim_bridge") or doc.get("mtm_serial_bridge") or {}).get("ros__parameters", {})
    return dict(pol), dict(br)


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.ros_nodes.node_processes import NodeFailure
    from mtm_runtime.sim.tasks import get_task

    try:
        model = resolve_model(args.model)
        task = get_task(args.task)
    except (FileNotFoundError, KeyError) as e:
        print(f"mtm rollout: {e}", file=sys.stderr)
        return 2
    from mtm_runtime.ros_nodes.closed_loop import run_closed_loop

    rate = args.rate  # 0: the bridge steps at the env's own rate (1/dt), the policy node keeps its default
    mode = args.mode or ("goal" if task.has_goal else "bc")
    pol, br = _extra_params(args.params_file)
    pol = {"mask_mode": mode, "stale_timeout": 1.0, **pol}
    br = {"seed": args.seed, "reset_timeout_s": 30.0, **br}  # episode 0 waits for the policy to be active
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    duration = 0.0 if args.target == "sim" else args.episodes * task.episode_steps / (rate or 50.0)
    try:
        res = run_closed_loop(model, log_dir=out / "logs", target=args.target, backend=args.backend, rate=f"{rate:g}" if rate else "",
                              task=task.key or task.name, sim_mode=args.sim_mode, episodes=args.episodes if args.target == "sim" else 0,
                              duration_s=duration or args.timeout, record=out / "rollout.mcap", policy_params=pol,
                              bridge_params=br, startup_timeout_s=args.timeout or 30.0 + args.episodes * 5.0,
                              progress=True)
    except NodeFailure as e:
        print(f"mtm rollout: {e}", file=sys.stderr)
        return 1
    summary = {"model": model, "target": args.target, "task": task.name, "mode": mode, "rate_hz": rate or "env",
               "sim_mode": args.sim_mode, "wall_s": round(res.wall_s, 2), "episodes": res.episodes,
               "mean_normalised_score": res.mean_score(), "success_rate": res.success_rate(), "policy_diagnostics": res.policy_diagnostics,
               "recorded_messages": res.recorded, "recording": res.record_path}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    success = res.success_rate()
    print(f"mtm rollout: {len(res.episodes)} episodes in {res.wall_s:.1f} s, mean normalised score "
          f"{res.mean_score():.1f}" + (f", success {100 * success:.0f}%" if success == success else "")
          + f"; recording {res.record_path}")
    return 0
