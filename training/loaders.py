"""Episodes (the in-memory form every dataset reader produces), the HDF5 readers, and training windows.

Readers of the other formats (Minari, LeRobotDataset, rosbag2) are beside this module and build
their episodes with :func:`build_episode`; ``training/sources.py`` picks one by what is on disk.
HDF5 here: our files (written by ``training/hdf5_writer.py``: ``mtm collect``, ``mtm import-bag``; a ``metadata`` group names the
task or carries the robot file) and any D4RL-layout file (``observations`` and ``actions``
required; ``rewards`` optional; episodes end at ``terminals | timeouts``, a trailing unflagged
remainder is kept as a truncated episode; without a task the layout is read from the file).

Loaded form: a list of :class:`Episode`, each a dict ``name -> float32 [L, width]`` with the
modalities (``states``, ``actions``, extras such as ``goals``, and ``returns`` plus ``rewards
[L, 1]`` where the data has rewards), and ``episode.present``:
``name -> bool`` (False where the data lacks that modality, e.g. actions of an unlabelled
episode; those arrays are zeros, never NaN). ``returns`` is the undiscounted return-to-go,
``rtg_t = sum_{k >= t} r_k`` over the rest of the (recorded) episode; its normalisation scale
(e.g. from ``task.rtg_horizon``) is chosen elsewhere.

:class:`WindowSampler`: windows of length T never cross an episode boundary. Episodes shorter
than T are *right-aligned*: the episode fills the last L positions and the first T - L positions
are marked unavailable (present 0, x 0), exactly like the runtime buffer at episode start.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from mtm_runtime.spec import ACTIONS, TrajectorySpec
from mtm_runtime.robot import RobotError, robot_from_dict
from mtm_runtime.sim.tasks import Task, get_task, task_for_data, task_for_robot

REQUIRED_KEYS = ("observations", "actions")
OPTIONAL_KEYS = ("rewards", "terminals", "timeouts", "infos/action_present")


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file and the key."""


class Episode(dict):
    """``name -> float32 [L, width]``; ``present[name]`` says whether the data had it."""

    def __init__(self, arrays: dict[str, np.ndarray], present: dict[str, bool], terminated: bool = False) -> None:
        super().__init__(arrays)
        self.present = dict(present)
        self.terminated = bool(terminated)

    @property
    def length(self) -> int:
        return len(self["states"])

    @property
    def labelled(self) -> bool:
        """Whether the episode has its actions (False: state-only, as in heteromodal data)."""
        return bool(self.present.get(ACTIONS, True))


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """``rtg_t = sum_{k >= t} r_k`` (float64 accumulation, float32 [L, 1] out)."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    return np.cumsum(r[::-1])[::-1].astype(np.float32).reshape(-1, 1)


def build_episode(where: str, parts: dict[str, np.ndarray], actions: np.ndarray | None, rewards: np.ndarray | None,
                  terminated: bool = False, action_present: bool | None = None, action_dim: int | None = None) -> Episode:
    """One Episode from per-step arrays: ``parts`` (``states`` and any extra modality such as
    ``goals``, each ``[L, width]``), ``actions [L, a]`` (None, or non-finite rows: the episode is
    unlabelled, its actions marked absent) and ``rewards [L]`` (None: the data has no rewards, so
    the episode has no ``returns``/``rewards``). ``where`` names the source in error messages."""
    if "states" not in parts:
        raise DatasetError(f"{where}: no states")
    L = len(parts["states"])
    arrays: dict[str, np.ndarray] = {}
    present: dict[str, bool] = {}
    for name, arr in parts.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(L, 1) if name != "states" else arr.reshape(L, -1)
        if arr.ndim != 2 or len(arr) != L:
            raise DatasetError(f"{where}: {name} has shape {arr.shape}, expected [{L}, width]")
        arrays[name], present[name] = np.ascontiguousarray(arr), True
    if actions is None:
        if action_dim is None:
            raise DatasetError(f"{where}: no actions, and no action width to mark them absent")
        actions = np.full((L, action_dim), np.nan, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim == 1:
        actions = actions.reshape(L, -1)
    if len(actions) != L:
        raise DatasetError(f"{where}: actions have {len(actions)} rows, states {L}")
    has_actions = bool(np.all(np.isfinite(actions))) if action_present is None else bool(action_present)
    arrays["actions"] = np.ascontiguousarray(actions) if has_actions else np.zeros(actions.shape, np.float32)
    present["actions"] = has_actions
    if rewards is not None:
        r = np.asarray(rewards, dtype=np.float32).reshape(-1)
        if len(r) != L:
            raise DatasetError(f"{where}: rewards have {len(r)} rows, states {L}")
        arrays["returns"], present["returns"] = returns_to_go(r), True
        arrays["rewards"], present["rewards"] = r.reshape(L, 1), True
    for name, arr in arrays.items():
        if present[name] and not np.all(np.isfinite(arr)):
            raise DatasetError(f"{where}: {name} contains NaN/inf in an episode marked present")
    return Episode(arrays, present, terminated)


def make_episode(task: Task, observations: np.ndarray, actions: np.ndarray | None, rewards: np.ndarray | None,
                 terminated: bool = False, action_present: bool | None = None) -> Episode:
    """Build one Episode of a task from raw per-step arrays (observations [L, obs_dim], actions [L, a])."""
    widths = task.modality_widths()
    ep = build_episode(task.name, task.split_observation(np.asarray(observations, dtype=np.float32)), actions, rewards,
                       terminated, action_present, action_dim=widths["actions"])
    for name, w in widths.items():
        if ep[name].shape != (len(ep["states"]), w):
            raise DatasetError(f"{task.name}: {name} has shape {ep[name].shape}, expected {(len(ep['states']), w)}")
    return ep


def data_widths(episodes: Sequence[Episode], where: str) -> dict[str, int]:
    """Modality widths in model order, read from the data: states, actions, returns (only if every
    episode has rewards), then the extra modalities (goals, ...). DatasetError if episodes disagree."""
    if not episodes:
        raise DatasetError(f"{where}: no episodes")
    first = episodes[0]
    widths = {"states": first["states"].shape[1], "actions": first["actions"].shape[1]}
    if all("returns" in ep for ep in episodes):
        widths["returns"] = 1
    extras = [k for k in first if k not in ("states", "actions", "returns", "rewards")]
    widths.update({k: first[k].shape[1] for k in extras})
    for i, ep in enumerate(episodes):
        for k, w in widths.items():
            if k not in ep or ep[k].shape[1] != w:
                got = "missing" if k not in ep else f"width {ep[k].shape[1]}"
                raise DatasetError(f"{where}: episode {i} has {k} {got}, episode 0 has width {w}")
    return widths


# ---- D4RL layout (ours and the original) -----------------------------------------------------
def _read_d4rl(path: Path, f: h5py.File) -> dict[str, np.ndarray]:
    """The per-step arrays of a D4RL-layout file. ``observations`` and ``actions`` are required;
    ``rewards`` may be absent (no returns modality); without ``terminals``/``timeouts`` the file
    is one episode."""
    for key in REQUIRED_KEYS:
        if key not in f:
            raise DatasetError(f"{path}: missing key '{key}' (a D4RL-layout file needs {', '.join(REQUIRED_KEYS)})")
    data = {k: f[k][()] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in f}
    n = len(data["observations"])
    for k, v in data.items():
        if len(v) != n:
            raise DatasetError(f"{path}: key '{k}' has {len(v)} rows, 'observations' has {n}")
    for k in ("observations", "actions"):
        if data[k].ndim != 2:
            raise DatasetError(f"{path}: key '{k}' has shape {data[k].shape}, expected [N, width]")
    for k in ("terminals", "timeouts"):
        data.setdefault(k, np.zeros(n, bool))
    return data


def split_d4rl(task: Task, data: dict[str, np.ndarray]) -> list[Episode]:
    """Split concatenated D4RL arrays into episodes at ``terminals | timeouts``."""
    term = data["terminals"].astype(bool).reshape(-1)
    ends = np.flatnonzero(term | data["timeouts"].astype(bool).reshape(-1)) + 1
    n = len(term)
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    episodes: list[Episode] = []
    start = 0
    ap = data.get("infos/action_present")
    rewards = data.get("rewards") if task.rewards else None
    for end in ends:
        sl = slice(start, end)
        episodes.append(make_episode(task, data["observations"][sl], data["actions"][sl],
                                     None if rewards is None else rewards[sl], terminated=bool(term[end - 1]),
                                     action_present=None if ap is None else bool(ap[start])))
        start = int(end)
    return episodes


def open_hdf5(path: str | Path) -> h5py.File:
    """``path`` opened for reading; DatasetError naming it when it is missing or not HDF5."""
    if not Path(path).exists():
        raise DatasetError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not an HDF5 file ({e})") from None


def read_hdf5(path: str | Path, task: Task | str | None = None) -> tuple[list[Episode], Task]:
    """Our HDF5 (task from its metadata) or any D4RL-layout file: with ``task`` (a benchmark name,
    a Gymnasium id or a Task) its layout is checked; without, the layout is read from the file."""
    path = Path(path)
    with open_hdf5(path) as f:
        attrs = f["metadata"].attrs if "metadata" in f else {}
        if task is None and "robot" in attrs:   # written by `mtm import-bag`: the robot file travels inside
            try:
                task = task_for_robot(robot_from_dict(json.loads(attrs["robot"]), f"{path} metadata.robot"))
            except (RobotError, json.JSONDecodeError) as e:
                raise DatasetError(f"{path}: metadata.robot is invalid ({e})") from None
        elif task is None and "task" in attrs:
            task = str(attrs["task"])
        data = _read_d4rl(path, f)
    obs_w, act_w = data["observations"].shape[1], data["actions"].shape[1]
    if task is None:
        task = task_for_data(path.stem, obs_w, act_w, rewards="rewards" in data)
    task = get_task(task) if isinstance(task, str) else task
    if task.rewards and "rewards" not in data and task.robot is not None and not task.has_reference:
        task = dataclasses.replace(task, rewards=False)   # a robot's log without rewards: no returns modality
    if obs_w != task.obs_dim:
        raise DatasetError(f"{path}: key 'observations' has shape {data['observations'].shape}, "
                           f"task {task.name} needs [N, {task.obs_dim}]")
    if act_w != task.action_dim:
        raise DatasetError(f"{path}: key 'actions' has shape {data['actions'].shape}, task {task.name} needs [N, {task.action_dim}]")
    if task.rewards and "rewards" not in data:
        raise DatasetError(f"{path}: missing key 'rewards' (task {task.name} has a returns modality)")
    return split_d4rl(task, data), task


def load_hdf5(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """The episodes of :func:`read_hdf5`."""
    return read_hdf5(path, task)[0]


def read_metadata(path: str | Path) -> dict:
    """The ``metadata`` attributes of one of our files (JSON fields decoded)."""
    with open_hdf5(path) as f:
        if "metadata" not in f:
            raise DatasetError(f"{path}: missing key 'metadata'")
        meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["metadata"].attrs.items()}
    for k in ("reference_returns", "modality_widths"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta


# ---- splitting and windows ----------------------------------------------------------------
def split_episodes(episodes: Sequence[Episode], val_fraction: float = 0.1,
                   seed: int = 0, labelled_only: bool = False) -> tuple[list[Episode], list[Episode]]:
    """Shuffle episodes with ``seed`` and hold out ``round(val_fraction * E)`` (>= 1 if E > 1).

    ``labelled_only`` keeps only the action-labelled episodes of each side, after splitting the
    whole file: a labelled-only run then trains on exactly the labelled episodes that a run on the
    whole (heteromodal) file trains on, which a fair heteromodal comparison needs.
    """
    n = len(episodes)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    val = [episodes[i] for i in sorted(order[:n_val])]
    train = [episodes[i] for i in sorted(order[n_val:])]
    if labelled_only:
        train, val = ([ep for ep in side if ep.labelled] for side in (train, val))
    return train, val


class WindowSampler:
    """Seeded uniform sampler of windows ``x [B, T, D]`` and ``present [B, T, M]`` (float32).

    A window is named by (episode, start): its first step relative to the episode's start. Every
    window is equally likely. By default windows lie inside the episode (starts 0..L-T; an episode
    shorter than T counts as one window, right-aligned, start L-T < 0). With ``start_windows``
    there is one window ending at every step (starts -(T-1)..L-T): the episode-start windows whose
    missing past is absent, exactly what the runtime buffer holds after ``reset()`` (DESIGN core
    idea 3), so a model trained on them acts well from the first step. Modalities of the spec
    missing from an episode (or marked not present) are 0 in x and 0 in present; so are steps
    before the episode's start. Windows never cross an episode boundary.
    """

    def __init__(self, episodes: Sequence[Episode], spec: TrajectorySpec, seed: int = 0,
                 start_windows: bool = False, labelled_share: float = 0.0) -> None:
        if not episodes:
            raise ValueError("WindowSampler needs at least one episode")
        self.spec, self.T = spec, spec.horizon
        self.rng = np.random.default_rng(seed)
        self.packed: list[np.ndarray] = []
        self.avail: list[np.ndarray] = []
        for i, ep in enumerate(episodes):
            L = len(ep["rewards"]) if "rewards" in ep else ep.length
            x = np.zeros((L, spec.packed_width), np.float32)
            av = np.zeros(spec.num_modalities, np.float32)
            for m, name in enumerate(spec.names):
                if name in ep and ep.present.get(name, True):
                    arr = np.asarray(ep[name], np.float32)
                    if arr.shape != (L, spec.width(name)):
                        raise ValueError(f"episode {i}: {name} has shape {arr.shape}, spec needs {(L, spec.width(name))}")
                    x[:, spec.slice(name)] = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
                    av[m] = 1.0
            self.packed.append(x)
            self.avail.append(av)
        self.lengths = np.array([len(x) for x in self.packed])
        T, lens = self.T, self.lengths
        if start_windows:
            self.first_start, self.starts_per_episode = np.full(len(lens), -(T - 1)), lens.copy()
        else:
            self.first_start, self.starts_per_episode = np.minimum(lens - T, 0), np.maximum(lens - T + 1, 1)
        self.cum = np.cumsum(self.starts_per_episode)
        self.set_labelled_share(labelled_share)

    @property
    def num_windows(self) -> int:
        return int(self.cum[-1])

    def window(self, episode: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """One window ``x [T, D]``, ``present [T, M]`` of ``episode`` from ``start`` (steps
        before the episode's start, ``start < 0``, are absent)."""
        T, ep = self.T, self.packed[episode]
        if not -(T - 1) <= start <= len(ep) - T:
            raise IndexError(f"episode {episode} (length {len(ep)}) has no window starting at {start}")
        x = np.zeros((T, self.spec.packed_width), np.float32)
        pres = np.zeros((T, self.spec.num_modalities), np.float32)
        first = max(start, 0)
        x[first - start:] = ep[first:start + T]
        pres[first - start:] = self.avail[episode]
        return x, pres

    def set_labelled_share(self, share: float) -> None:
        """Draw at least ``share`` of every batch from action-labelled episodes (0 = uniform).

        For heteromodal data (most episodes state-only), where uniform windows would show the
        action tokens in only a few samples per batch. No effect when every episode, or none,
        has actions.
        """
        if not 0.0 <= share < 1.0:
            raise ValueError(f"labelled_share must be in [0, 1), got {share}")
        a = self.spec.index(ACTIONS) if ACTIONS in self.spec else None
        labelled = np.array([a is not None and av[a] > 0 for av in self.avail])
        self.labelled_share = share if 0 < labelled.sum() < len(labelled) else 0.0
        self.labelled_eps = np.flatnonzero(labelled)
        self.labelled_cum = np.cumsum(self.starts_per_episode[self.labelled_eps])

    def sample_index(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode ids, start steps) of ``batch_size`` windows: uniform over all windows, except
        the first ``round(labelled_share * batch_size)`` (uniform over labelled episodes' windows)."""
        n_lab = int(round(self.labelled_share * batch_size))
        eps, starts = self._draw(self.cum, batch_size - n_lab)
        if n_lab:
            k, starts_l = self._draw(self.labelled_cum, n_lab)
            eps, starts = np.concatenate([self.labelled_eps[k], eps]), np.concatenate([starts_l, starts])
        return eps, starts + self.first_start[eps]

    def _draw(self, cum: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` uniform windows over episodes whose window counts have cumulative sum ``cum``:
        (index into those episodes, window offset from the episode's first window)."""
        flat = self.rng.integers(0, int(cum[-1]), size=n)
        k = np.searchsorted(cum, flat, side="right")
        return k, flat - np.concatenate([[0], cum[:-1]])[k]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``x [B, T, D]`` float32 and ``present [B, T, M]`` float32."""
        eps, starts = self.sample_index(batch_size)
        xs, ps = zip(*(self.window(int(e), int(s)) for e, s in zip(eps, starts)))
        return np.stack(xs), np.stack(ps)
