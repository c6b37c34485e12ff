"""A Minari dataset directory on disk -> episodes, read with ``minari`` itself (either storage format).

The simulator is the dataset's ``env_spec.id`` (when it installs here; otherwise the data alone
gives the layout, and training works without rollouts); a dict observation gives ``states`` = its
``observation`` and ``goals`` = its ``desired_goal``; Minari stores L + 1 observations per episode of
L steps (the last is dropped). The recorded action space and ``ref_min_score``/``ref_max_score``
are in the metadata (``minari_metadata``), which ``training/sources.py`` turns into limits and
reference returns.
"""
from __future__ import annotations

import json
from pathlib import Path

import minari
import numpy as np

from mtm_runtime.sim.tasks import Task, TaskError, get_task, task_for_data
from mtm_runtime.training.loaders import DatasetError, Episode, build_episode, make_episode


def minari_metadata(path: str | Path) -> tuple[Path, dict]:
    """(the ``data`` directory, its ``metadata.json`` with ``env_spec`` and the spaces decoded)."""
    path = Path(path)
    data_dir = path / "data" if (path / "data").is_dir() else path
    meta_file = data_dir / "metadata.json"
    if not meta_file.exists():
        raise DatasetError(f"{meta_file}: missing (a Minari dataset directory holds data/metadata.json)")
    try:
        meta = json.loads(meta_file.read_text())
        for k in ("env_spec", "observation_space", "action_space"):
            if isinstance(meta.get(k), str):
                meta[k] = json.loads(meta[k])
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_file}: not valid JSON ({e})") from None
    return data_dir, meta


def _flat(name: str, obs: object, where: str) -> np.ndarray:
    """A Box observation, or a dict of them flattened in key order."""
    if isinstance(obs, dict):
        return np.concatenate([_flat(f"{name}.{k}", obs[k], where) for k in sorted(obs)], axis=-1)
    arr = np.asarray(obs, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise DatasetError(f"{where}: '{name}' has shape {arr.shape}; only vector observations are supported")
    return arr


def read_minari(path: str | Path, task: Task | str | None = None) -> tuple[list[Episode], Task, dict]:
    """A Minari dataset directory on disk, either storage format, read with ``minari`` itself.
    The simulator is the dataset's ``env_spec.id`` (or ``task``); a dict observation gives
    ``states`` = its ``observation`` and ``goals`` = its ``desired_goal``. Returns (episodes, task,
    metadata)."""
    data_dir, meta = minari_metadata(path)
    env_id = (meta.get("env_spec") or {}).get("id", "")
    try:
        episodes_read = list(minari.MinariDataset(data_dir).iterate_episodes())
    except Exception as e:  # noqa: BLE001 - minari raises several types for a damaged dataset
        raise DatasetError(f"{data_dir}: minari cannot read this dataset ({type(e).__name__}: {e})") from None
    raw = []
    for ep in episodes_read:
        L = len(ep.rewards)   # Minari stores L + 1 observations
        obs = ep.observations
        if isinstance(obs, dict) and "observation" in obs:
            parts = {"states": _flat("observation", obs["observation"], str(data_dir))[:L]}
            if "desired_goal" in obs:
                parts["goals"] = _flat("desired_goal", obs["desired_goal"], str(data_dir))[:L]
        else:
            parts = {"states": _flat("observations", obs, str(data_dir))[:L]}
        actions = _flat("actions", ep.actions, str(data_dir))
        raw.append((parts, actions, np.asarray(ep.rewards, np.float32), bool(np.asarray(ep.terminations)[-1])))
    if not raw:
        raise DatasetError(f"{data_dir}: no episodes")
    if task is None and env_id:
        try:
            task = get_task(env_id)
        except TaskError:
            task = None   # the environment does not install here: train from the data, no rollouts
    if task is None:
        goal_w = raw[0][0]["goals"].shape[1] if "goals" in raw[0][0] else 0
        if goal_w:
            raise DatasetError(f"{data_dir}: goal-conditioned dataset for {env_id or 'an unknown environment'}, "
                               "which does not install here; pass --env with an environment that does")
        task = task_for_data(str(meta.get("dataset_id", data_dir.parent.name)).replace("/", "_"), raw[0][0]["states"].shape[1],
                             raw[0][1].shape[1], env_id=env_id)
    task = get_task(task) if isinstance(task, str) else task
    episodes = []
    for i, (parts, actions, rewards, terminated) in enumerate(raw):
        where = f"{data_dir} episode {i}"
        if "goals" in parts or task.goal_slice is None:
            ep = build_episode(where, parts, actions, rewards, terminated)
        else:
            ep = make_episode(task, parts["states"], actions, rewards, terminated)
        for name, w in task.modality_widths().items():
            if name not in ep or ep[name].shape[1] != w:
                got = "missing" if name not in ep else f"width {ep[name].shape[1]}"
                raise DatasetError(f"{where}: {name} {got}, task {task.name} needs width {w}")
        episodes.append(ep)
    return episodes, task, meta


def load_minari(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """The episodes of :func:`read_minari`."""
    return read_minari(path, task)[0]
