"""Our HDF5 files, written by one writer: the D4RL layout plus a ``metadata`` group.

Written by ``mtm collect`` (``training/datasets.py``: the scripted experts' tiers), ``mtm
import-bag`` (``training/rosbag_import.py``) and the MCAP recording import
(``training/mcap_import.py``); read by ``training/loaders.py`` (``read_hdf5``, ``read_metadata``).
One row per environment step, all episodes concatenated in order:

==========================  =====================  ===========================================
key                         shape / dtype          meaning
==========================  =====================  ===========================================
observations                [N, obs_dim] float32   observation the action was chosen from
actions                     [N, act_dim] float32   action executed; NaN where not recorded
rewards                     [N] float32            (an imported log: only if it has rewards)
terminals                   [N] bool               true MDP termination at this step
timeouts                    [N] bool               episode truncated (time limit) at this step
next_observations           [N, obs_dim] float32   generated tiers and recordings only
infos/goal                  [N, goal_dim] float32  goal tasks only (Reacher target x, y in m)
infos/action_present        [N] bool               per-episode flag, repeated over its steps:
                                                   False = actions of this episode removed
                                                   (heteromodal data; they are NaN in actions)
infos/episode_id            [N] int32              episode index 0..E-1
infos/action_inferred       [N] bool               imported logs: per-episode flag, True = a
                                                   model inferred these actions
                                                   (``mtm import-bag --relabel-actions``)
metadata (group attrs)      generated tiers: task, env_id, seed, tier, episodes,
                            action_fraction, label_seed, reference_returns (JSON),
                            modality_widths (JSON), generator_version, created (UTC ISO 8601);
                            imported logs: robot (the robot file, JSON), tier ``recorded``,
                            source ``rosbag2``, import_report (JSON), episodes,
                            actions_inferred_by, episodes_inferred
==========================  =====================  ===========================================

A file is written whole or not at all: to ``NAME.partial`` beside it, then renamed over it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from mtm_runtime.fileio import atomic_path
from mtm_runtime.training.loaders import Episode

__all__ = ["episodes_to_d4rl", "write_d4rl_hdf5"]


def write_d4rl_hdf5(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any],
                    compress: bool = True) -> Path:
    """Write ``arrays`` (key -> per-step array, in this order) and the ``metadata`` group's
    attributes to ``path``, atomically. ``compress``: gzip (level 4) on every array, as ``mtm
    collect`` writes; False: plain arrays, as ``mtm import-bag`` writes."""
    options: dict[str, Any] = {"compression": "gzip", "compression_opts": 4} if compress else {}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr, **options)
        f.create_group("metadata").attrs.update(metadata)
    return Path(path)


def episodes_to_d4rl(episodes: Sequence[Episode], inferred: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Episodes (``training/loaders.py``) -> the per-step arrays of the layout: ``observations``
    are the states (then the goals, where the episodes have them); an unlabelled episode's actions
    are NaN; ``rewards`` only if every episode has them; each episode ends in a terminal or a
    time-out (``Episode.terminated``). ``inferred``: indices of the episodes whose actions a model
    inferred (``infos/action_inferred``)."""
    obs = np.concatenate([np.concatenate([ep["states"], ep["goals"]], 1) if "goals" in ep else ep["states"]
                          for ep in episodes])
    lengths = [ep.length for ep in episodes]
    ends = np.cumsum(lengths) - 1
    terminated = np.array([ep.terminated for ep in episodes], bool)
    terminals, timeouts = np.zeros(len(obs), bool), np.zeros(len(obs), bool)
    terminals[ends], timeouts[ends] = terminated, ~terminated
    arrays = {"observations": obs.astype(np.float32),
              "actions": np.concatenate([ep["actions"] if ep.labelled else np.full(ep["actions"].shape, np.nan, np.float32)
                                         for ep in episodes]).astype(np.float32)}
    if all("rewards" in ep for ep in episodes):
        arrays["rewards"] = np.concatenate([ep["rewards"][:, 0] for ep in episodes]).astype(np.float32)
    arrays["terminals"], arrays["timeouts"] = terminals, timeouts
    filled = set(inferred)
    arrays["infos/action_present"] = np.concatenate([np.full(L, ep.labelled) for L, ep in zip(lengths, episodes)])
    arrays["infos/episode_id"] = np.concatenate([np.full(L, i, np.int32) for i, L in enumerate(lengths)])
    arrays["infos/action_inferred"] = np.concatenate([np.full(L, i in filled) for i, L in enumerate(lengths)])
    return arrays
