"""The knobs of a training run (``training/train.py``): ``Args``, and where their values come from.

Precedence: the dataclass defaults < a ``--config`` YAML/JSON file of Args fields < explicit
command-line flags. Every flag defaults to None, so only a flag that was given overrides the file;
``resolve_args`` merges the three, coerces each value to its field's type (tuples from lists or
comma strings) and refuses a run that cannot start (no data, unknown preset or mask kind, ...).
``mtm train`` and ``python -m mtm_runtime.training.train`` share these flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtm_runtime import masks as M
from mtm_runtime.model import PRESETS


@dataclass
class Args:
    """Every knob of a run. Units: steps are optimiser steps; batch_size is global (all ranks)."""

    data: str = ""                        # dataset: HDF5 (ours / D4RL layout), Minari dir, LeRobotDataset dir, rosbag2
    env: str = ""                         # simulator: benchmark task, Gymnasium id or robot file; default: what the data names
    task: str = ""                        # older name of --env
    robot: str = ""                       # robot file (joints, fields, limits; needed for a rosbag2)
    state_keys: tuple[str, ...] = ()      # LeRobotDataset: state feature(s), default observation.state
    action_key: str = ""                  # LeRobotDataset: action feature, default action
    out: str = "runs/mtm"                 # output / checkpoint directory
    preset: str = "embedded"              # model size: embedded | paper
    dropout: float = -1.0                 # model dropout; < 0 = the preset's (embedded 0, paper 0.1)
    horizon: int = 4                      # window length T
    steps: int = 5000                     # total optimiser steps
    batch_size: int = 256                 # global batch (split evenly over ranks)
    lr: float = 0.0                       # peak learning rate; 0 = PRESET_LR[preset]
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    masks: tuple[str, ...] = ("auto",)    # training mask kinds, one drawn per sample
    loss_on: str = "all"                  # tokens the loss counts: all present ones | hidden (the ones the mask hid)
    val_fraction: float = 0.1             # fraction of episodes held out for validation
    val_every: int = 500                  # validation loss period (steps); 0 = only at the end
    val_windows: int = 1024               # validation windows (fixed set)
    eval_every: int = 0                   # policy evaluation period (steps); 0 = never
    eval_episodes: int = 10
    eval_modes: tuple[str, ...] = ("bc",)
    ckpt_every: int = 1000                # checkpoint period (steps); always at the end
    until: int = 0                        # stop (with a checkpoint) once this step is reached; 0 = steps
    resume: bool = False                  # continue from the train state in --out
    labelled_only: bool = False           # train on the labelled episodes of the usual split only (heteromodal baseline)
    labelled_share: float = 0.0           # min share of each batch from action-labelled episodes; 0 = uniform
    self_label_at: int = 0                # at this step, give action-free episodes the model's own ID estimates; 0 = off
    start_windows: bool = True            # also train on episode-start windows (history < T, as after reset)
    rtg_scale: float = 0.0                # returns normalisation scale; 0 = max |episode return|
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    threads: int = 0                      # torch CPU threads per process; 0 = torch default
    progress: bool = True                 # tqdm bar (rank 0)
    plot: bool = True                     # curves.png at the end


def _coerce(name: str, value: Any) -> Any:
    """Config-file / CLI value -> the Args field's type (tuples from lists or comma strings)."""
    default = Args.__dataclass_fields__[name].default
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return type(default)(value)  # type: ignore[misc]  # every Args field has a plain default


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file of Args fields; unknown keys are an error."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text) or {}
    else:
        cfg = json.loads(text)
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: must hold a mapping of training options")
    unknown = sorted(set(cfg) - set(Args.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{p}: unknown training options {unknown}")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for every Args field; all default to None so only explicit flags override a config."""
    p.add_argument("--config", help="YAML or JSON file of training options (flags override it)")
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, dest=f.name, default=None, help=f"comma list (default {','.join(f.default)})")
        else:
            p.add_argument(flag, dest=f.name, default=None, type=type(f.default), help=f"default {f.default!r}")


def resolve_args(ns: argparse.Namespace) -> Args:
    """Defaults < config file < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_config_file(ns.config))
    for f in dataclasses.fields(Args):
        v = getattr(ns, f.name, None)
        if v is not None:
            values[f.name] = v
    args = Args(**{k: _coerce(k, v) for k, v in values.items()})
    if not args.data:
        raise SystemExit("train: --data is required (in a flag or the config file)")
    if args.preset not in PRESETS:
        raise SystemExit(f"train: unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    if not args.dropout < 1.0:
        raise SystemExit(f"train: --dropout must be < 1 (or < 0 for the preset's), got {args.dropout}")
    if args.loss_on not in ("all", "hidden"):
        raise SystemExit(f"train: --loss-on must be 'all' or 'hidden', got {args.loss_on!r}")
    for k in args.masks:
        if k not in M.TRAINING_MASKS:
            raise SystemExit(f"train: unknown mask kind {k!r}; choose from {', '.join(M.TRAINING_MASKS)}")
    return args
