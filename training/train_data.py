"""Where a training run's episodes come from: the dataset at ``--data`` (any format
``training/sources.py`` reads), or episodes handed over in memory (tests and benchmarks pass a
benchmark task's episodes, or a subset of them; the provenance still names ``--data``).

Either way the run (``training/train.py``) gets one ``RunData``: the episodes, the task (simulator
and robot), the action limits, the modality widths the spec is built from, the format the data
came in and, for our HDF5 files, its metadata (the dataset tier goes into the provenance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mtm_runtime.safety import ActionLimits
from mtm_runtime.sim.tasks import Task, get_task
from mtm_runtime.training.loaders import DatasetError, Episode, data_widths, read_metadata
from mtm_runtime.training.sources import load_dataset
from mtm_runtime.training.train_args import Args


@dataclass
class RunData:
    """The episodes of a run and what is known about them."""

    episodes: list[Episode]
    task: Task
    limits: ActionLimits | None
    widths: dict[str, int]         # modality widths, read from the episodes
    source: str | None             # the format load_dataset detected; None for in-memory episodes
    meta: dict[str, Any]           # our HDF5 file's metadata; {} for every other source


def load_run_data(args: Args, episodes: list[Episode] | None = None,
                  log: Callable[..., None] = print) -> RunData:
    """``args.data`` read with ``load_dataset`` (its notes go to ``log``), or ``episodes`` of the
    task ``args.env`` (``args.task``) with the widths they have (``Task.with_data_widths``)."""
    if episodes is not None:   # in-memory episodes of a benchmark task (tests, benchmarks)
        widths = data_widths(episodes, "episodes")
        task = get_task(args.env or args.task).with_data_widths(widths)
        limits = task.robot.limits if task.robot is not None else None
        return RunData(episodes, task, limits, widths, None, {})
    ds = load_dataset(args.data, env=args.env or args.task, robot=args.robot, state_keys=args.state_keys,
                      action_key=args.action_key)
    meta: dict[str, Any] = {}
    if ds.source == "hdf5":
        try:
            meta = read_metadata(args.data)
        except DatasetError:   # a plain D4RL-layout file: no metadata group
            meta = {}
    for note in ds.notes:
        log(f"[train] {ds.path}: {note}")
    return RunData(ds.episodes, ds.task, ds.limits, ds.widths, ds.source, meta)
