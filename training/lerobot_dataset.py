"""A LeRobotDataset on disk (codebase v2.1 and v3.0 layouts) -> episodes, read with pyarrow.

The layout (LeRobot's documentation): ``meta/info.json`` holds ``codebase_version``, ``fps`` and
``features`` (name -> ``dtype``, ``shape``, ``names``); the frames are parquet files under
``data/`` (v2.1: one file per episode, ``data/chunk-000/episode_000000.parquet``; v3.0: several
episodes per file, ``data/chunk-000/file-000.parquet``), one row per frame with a column per
non-video feature plus ``episode_index`` and ``frame_index``. Both layouts are read the same way:
every parquet file under ``data/``, rows grouped by ``episode_index`` and ordered by
``frame_index``.

States: ``state_keys`` (default ``observation.state``), concatenated in order; actions:
``action_key`` (default ``action``); rewards: ``next.reward`` where the dataset has it (else no
returns modality); an episode whose last ``next.done`` is true terminated. Video and image
features are not read (named in the notes). A robot file, if given, must agree with the widths.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtm_runtime.robot import Robot
from mtm_runtime.training.loaders import DatasetError, Episode, build_episode

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")


def is_lerobot(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def read_lerobot(path: str | Path, state_keys: Sequence[str] = (), action_key: str = "",
                 robot: Robot | None = None) -> tuple[list[Episode], dict, list[str]]:
    """(episodes, info.json, notes) of the dataset at ``path``."""
    path = Path(path)
    info_file = path / "meta" / "info.json"
    try:
        info = json.loads(info_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{info_file}: missing (a LeRobotDataset holds meta/info.json)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{info_file}: not valid JSON ({e})") from None
    version = str(info.get("codebase_version", ""))
    if version not in SUPPORTED_VERSIONS:
        raise DatasetError(f"{info_file}: codebase_version {version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    features = info.get("features")
    if not isinstance(features, dict) or not features:
        raise DatasetError(f"{info_file}: missing key 'features'")
    notes = [f"{k}: {v.get('dtype')} feature not read (images/video are not used)" for k, v in features.items()
             if isinstance(v, dict) and v.get("dtype") in ("video", "image")]
    numeric = [k for k, v in features.items() if isinstance(v, dict) and v.get("dtype") in ("float32", "float64")]
    state_keys = list(state_keys) or ["observation.state"]
    action_key = action_key or "action"
    for key, what in [*((k, "state") for k in state_keys), (action_key, "action")]:
        if key not in features:
            raise DatasetError(f"{info_file}: no feature '{key}' for the {what} (numeric features: {', '.join(numeric)}); "
                               f"choose with --state-keys / --action-key")
        if key not in numeric:
            raise DatasetError(f"{info_file}: feature '{key}' is {features[key].get('dtype')}, not float32/float64")
    reward_key = "next.reward" if "next.reward" in features else ""
    done_key = "next.done" if "next.done" in features else ""
    files = sorted((path / "data").rglob("*.parquet"))
    if not files:
        raise DatasetError(f"{path / 'data'}: no parquet files")
    columns = [*state_keys, action_key, "episode_index", "frame_index", *filter(None, (reward_key, done_key))]
    tables = []
    for f in files:
        try:
            t = pq.read_table(f, columns=columns)
        except (pa.ArrowInvalid, KeyError, OSError) as e:
            raise DatasetError(f"{f}: cannot read columns {', '.join(columns)} ({e})") from None
        tables.append(t)
    table = pa.concat_tables(tables)
    order = pc.sort_indices(table, sort_keys=[("episode_index", "ascending"), ("frame_index", "ascending")])
    table = table.take(order)
    ep_index = table.column("episode_index").to_numpy()

    def matrix(key: str) -> np.ndarray:
        col = table.column(key).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            width = int(np.prod(features[key].get("shape", [len(flat) // max(len(col), 1)])))
            if len(flat) != width * len(col):
                raise DatasetError(f"{path}: feature '{key}' rows are not all {width} wide")
            return flat.reshape(len(col), width)
        return col.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)

    states = np.concatenate([matrix(k) for k in state_keys], axis=1)
    actions = matrix(action_key)
    rewards = matrix(reward_key)[:, 0] if reward_key else None
    done = table.column(done_key).to_numpy(zero_copy_only=False).astype(bool) if done_key else None
    if robot is not None:
        if states.shape[1] != robot.state_dim:
            raise DatasetError(f"{path}: states ({', '.join(state_keys)}) are {states.shape[1]} wide, "
                               f"robot {robot.name!r} describes {robot.state_dim} ({', '.join(robot.state_names()[:4])}, ...)")
        if actions.shape[1] != robot.action_dim:
            raise DatasetError(f"{path}: '{action_key}' is {actions.shape[1]} wide, robot {robot.name!r} has {robot.action_dim} joints")
    cuts = np.flatnonzero(np.diff(ep_index)) + 1
    episodes = []
    for sl in np.split(np.arange(len(ep_index)), cuts):
        where = f"{path} episode {int(ep_index[sl[0]])}"
        episodes.append(build_episode(where, {"states": states[sl]}, actions[sl], None if rewards is None else rewards[sl],
                                      terminated=bool(done[sl[-1]]) if done is not None else False))
    return episodes, info, notes
