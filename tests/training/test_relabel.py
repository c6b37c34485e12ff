"""``mtm import-bag --relabel-actions MODEL``: action-free episodes of a real rosbag2 get the
model's inverse-dynamics actions, marked as inferred in the file; the file trains."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dataset_writers import write_arm_bag, write_arm_robot
from fault_helpers import tiny_checkpoint
from mtm_runtime import cli
from mtm_runtime.policy import Policy
from mtm_runtime.robot import load_robot
from mtm_runtime.training.relabel import RelabelError, relabel_actions
from mtm_runtime.training.rosbag_import import BagImport, read_bag
from mtm_runtime.training.sources import load_dataset
from mtm_runtime.training.train import run
from mtm_runtime.training.train_args import Args


def test_relabelled_actions_are_inferred_marked_and_close(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_arm_bag(tmp_path / "bag", "mcap", episodes=3, seconds=4.0)
    robot = write_arm_robot(tmp_path / "arm.yaml")
    labelled, free = tmp_path / "labelled.hdf5", tmp_path / "free.hdf5"
    assert cli.main(["import-bag", str(bag), "--robot", str(robot), "-o", str(labelled)]) == 0
    # an inverse-dynamics model from the labelled import (ID masks in the mix)
    run(Args(data=str(labelled), out=str(tmp_path / "id"), steps=600, batch_size=64, val_every=0, ckpt_every=0,
             val_fraction=0.0, masks=("auto", "id", "id"), progress=False, plot=False, threads=1))
    assert cli.main(["import-bag", str(bag), "--robot", str(robot), "-o", str(free), "--actions", "missing",
                     "--relabel-actions", str(tmp_path / "id")]) == 0
    assert "actions inferred by" in capsys.readouterr().out
    with h5py.File(free) as f, h5py.File(labelled) as g:
        inferred, present = f["infos/action_inferred"][()], f["infos/action_present"][()]
        assert inferred.all() and present.all()
        assert f["metadata"].attrs["actions_inferred_by"] == str(tmp_path / "id")
        assert not g["infos/action_inferred"][()].any()
        est, true = f["actions"][()], g["actions"][()]
        ef, eg = f["infos/episode_id"][()], g["infos/episode_id"][()]
    assert np.all(np.isfinite(est))
    # the state-only import keeps each episode's last step (no command needed): compare step by step
    pairs = [(est[ef == e][:n], true[eg == e][:n]) for e in np.unique(eg) for n in [min((ef == e).sum(), (eg == e).sum())]]
    est, true = np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])
    # closer to the commanded actions than their mean is (the error can fail: an untrained model does not pass)
    err = np.mean((est - true) ** 2)
    baseline = np.mean((true - true.mean(axis=0)) ** 2)
    assert err < 0.5 * baseline, (err, baseline)
    ds = load_dataset(free)
    assert all(ep.labelled for ep in ds.episodes)
    # a model that is not there is one line, exit 2, and no file
    rc = cli.main(["import-bag", str(bag), "--robot", str(robot), "-o", str(tmp_path / "x.hdf5"), "--actions", "missing",
                   "--relabel-actions", str(tmp_path / "nope")])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.hdf5").exists()


def test_a_model_of_other_widths_is_refused(tmp_path: Path) -> None:
    bag = write_arm_bag(tmp_path / "bag", "mcap", episodes=1, seconds=1.0)
    eps, _ = read_bag(bag, BagImport(load_robot(write_arm_robot(tmp_path / "arm.yaml")), action_source="missing"))
    with pytest.raises(RelabelError, match="states have width 3"):
        relabel_actions(eps, Policy.load(tiny_checkpoint(tmp_path / "ck", states=3, actions=7)), "ck")
    assert not any(ep.labelled for ep in eps)
