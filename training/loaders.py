"""Load trajectory datasets into episodes, and sample training windows from them.

Sources:
* our HDF5 files (``training/datasets.py``; they carry a ``metadata`` group naming the task),
* a D4RL hdf5 file a user already has (same keys; pass the task, episodes end at
  ``terminals | timeouts``; a trailing unflagged remainder is kept as a truncated episode),
* a Minari dataset directory on disk (``data/main_data.hdf5`` read directly with h5py; the
  Arrow storage format needs the optional ``minari`` package).

Loaded form: a list of :class:`Episode`, each a dict ``name -> float32 [L, width]`` with the
task's modalities (``task.modality_widths()``) plus ``rewards [L, 1]``, and ``episode.present``:
``name -> bool`` (False where the data lacks that modality, e.g. actions of an unlabelled
episode; those arrays are zeros, never NaN). ``returns`` is the undiscounted return-to-go,
``rtg_t = sum_{k >= t} r_k`` over the rest of the (recorded) episode; its normalisation scale
(e.g. from ``task.rtg_horizon``) is chosen elsewhere.

:class:`WindowSampler`: windows of length T never cross an episode boundary. Episodes shorter
than T are *right-aligned*: the episode fills the last L positions and the first T - L positions
are marked unavailable (present 0, x 0), exactly like the runtime buffer at episode start.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from mtm_runtime.spec import ACTIONS, TrajectorySpec
from mtm_runtime.sim.tasks import Task, get_task

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


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


def make_episode(task: Task, observations: np.ndarray, actions: np.ndarray | None, rewards: np.ndarray,
                 terminated: bool = False, action_present: bool | None = None) -> Episode:
    """Build one Episode from raw per-step arrays (observations [L, obs_dim], actions [L, a])."""
    L = len(rewards)
    parts = task.split_observation(np.asarray(observations, dtype=np.float32))
    widths = task.modality_widths()
    arrays: dict[str, np.ndarray] = {}
    present: dict[str, bool] = {}
    if actions is None:
        actions = np.full((L, widths["actions"]), np.nan, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32).reshape(L, -1)
    has_actions = bool(np.all(np.isfinite(actions))) if action_present is None else bool(action_present)
    for name, w in widths.items():
        if name == "actions":
            arr, ok = (actions if has_actions else np.zeros((L, w), np.float32)), has_actions
        elif name == "returns":
            arr, ok = returns_to_go(rewards), True
        else:
            arr, ok = parts[name].astype(np.float32), True
        if arr.shape != (L, w):
            raise DatasetError(f"{task.name}: {name} has shape {arr.shape}, expected {(L, w)}")
        arrays[name], present[name] = np.ascontiguousarray(arr, dtype=np.float32), ok
    arrays["rewards"] = np.asarray(rewards, dtype=np.float32).reshape(L, 1)
    present["rewards"] = True
    for name, arr in arrays.items():
        if present[name] and not np.all(np.isfinite(arr)):
            raise DatasetError(f"{task.name}: {name} contains NaN/inf in an episode marked present")
    return Episode(arrays, present, terminated)


# ---- D4RL layout (ours and the original) -----------------------------------------------------
def _read_d4rl(path: Path, f: h5py.File) -> dict[str, np.ndarray]:
    for key in REQUIRED_KEYS:
        if key not in f:
            raise DatasetError(f"{path}: missing key '{key}' (a D4RL file needs {', '.join(REQUIRED_KEYS)})")
    data = {k: f[k][()] for k in REQUIRED_KEYS}
    n = len(data["rewards"])
    for k, v in data.items():
        if len(v) != n:
            raise DatasetError(f"{path}: key '{k}' has {len(v)} rows, 'rewards' has {n}")
    if "infos/action_present" in f:
        data["infos/action_present"] = f["infos/action_present"][()]
        if len(data["infos/action_present"]) != n:
            raise DatasetError(f"{path}: key 'infos/action_present' has wrong length")
    return data


def split_d4rl(task: Task, data: dict[str, np.ndarray]) -> list[Episode]:
    """Split concatenated D4RL arrays into episodes at ``terminals | timeouts``."""
    term = data["terminals"].astype(bool).reshape(-1)
    ends = np.flatnonzero(term | data["timeouts"].astype(bool).reshape(-1)) + 1
    n = len(term)
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    episodes, start = [], 0
    ap = data.get("infos/action_present")
    for end in ends:
        sl = slice(start, end)
        episodes.append(make_episode(task, data["observations"][sl], data["actions"][sl], data["rewards"][sl],
                                     terminated=bool(term[end - 1]),
                                     action_present=None if ap is None else bool(ap[start])))
        start = end
    return episodes


def load_hdf5(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """Our HDF5 (task from its metadata) or a D4RL hdf5 file (``task`` required)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not an HDF5 file ({e})") from None
    with f:
        if task is None:
            if "metadata" not in f or "task" not in f["metadata"].attrs:
                raise DatasetError(f"{path}: missing key 'metadata' (attribute 'task'); "
                                   "pass the task for a plain D4RL file")
            task = str(f["metadata"].attrs["task"])
        task = get_task(task) if isinstance(task, str) else task
        data = _read_d4rl(path, f)
    obs_w = data["observations"].shape[-1]
    if data["observations"].ndim != 2 or obs_w != task.obs_dim:
        raise DatasetError(f"{path}: key 'observations' has shape {data['observations'].shape}, "
                           f"task {task.name} needs [N, {task.obs_dim}]")
    return split_d4rl(task, data)


def read_metadata(path: str | Path) -> dict:
    """The ``metadata`` attributes of one of our files (JSON fields decoded)."""
    with h5py.File(path, "r") as f:
        if "metadata" not in f:
            raise DatasetError(f"{path}: missing key 'metadata'")
        meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["metadata"].attrs.items()}
    for k in ("reference_returns", "modality_widths"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta


# ---- Minari ------------------------------------------------------------------------------
def load_minari(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """A Minari dataset directory (the one holding ``data/``) already on disk."""
    path = Path(path)
    data_dir = path / "data" if (path / "data").is_dir() else path
    meta_file = data_dir / "metadata.json"
    if task is None:
        if not meta_file.exists():
            raise DatasetError(f"{meta_file}: missing (needed to find the task; or pass the task)")
        env_spec = json.loads(json.loads(meta_file.read_text()).get("env_spec", "{}") or "{}")
        if "id" not in env_spec:
            raise DatasetError(f"{meta_file}: missing key 'env_spec.id'")
        task = env_spec["id"]
    task = get_task(task) if isinstance(task, str) else task
    h5 = data_dir / "main_data.hdf5"
    if not h5.exists():
        return _load_minari_arrow(data_dir, task)
    episodes = []
    with h5py.File(h5, "r") as f:
        names = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        if not names:
            raise DatasetError(f"{h5}: no 'episode_N' groups")
        for name in names:
            g = f[name]
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                if key not in g:
                    raise DatasetError(f"{h5}: missing key '{name}/{key}'")
            if not isinstance(g["observations"], h5py.Dataset):
                raise DatasetError(f"{h5}: '{name}/observations' is a dict space; only Box observations are supported")
            rewards = g["rewards"][()]
            obs = g["observations"][()][: len(rewards)]  # Minari stores L + 1 observations
            episodes.append(make_episode(task, obs, g["actions"][()], rewards,
                                         terminated=bool(g["terminations"][()][-1])))
    return episodes


def _load_minari_arrow(data_dir: Path, task: Task) -> list[Episode]:
    try:
        import minari  # optional dependency
    except ImportError:
        raise DatasetError(f"{data_dir}: no main_data.hdf5; reading Minari's Arrow format needs the optional "
                           "package `minari` (pip install minari)") from None
    dataset = minari.MinariDataset(data_dir)
    return [make_episode(task, ep.observations[: len(ep.rewards)], ep.actions, ep.rewards,
                         terminated=bool(ep.terminations[-1])) for ep in dataset.iterate_episodes()]


def load_episodes(path: str | Path, task: Task | str | None = None) -> list[Episode]:
    """Any supported source: a directory is Minari, a file is HDF5 (ours or D4RL)."""
    return load_minari(path, task) if Path(path).is_dir() else load_hdf5(path, task)


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
        T, L = self.T, self.lengths
        if start_windows:
            self.first_start, self.starts_per_episode = np.full(len(L), -(T - 1)), L.copy()
        else:
            self.first_start, self.starts_per_episode = np.minimum(L - T, 0), np.maximum(L - T + 1, 1)
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
