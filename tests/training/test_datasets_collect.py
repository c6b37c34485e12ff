"""Collection, HDF5 round trip, loaders (ours, D4RL, Minari-on-disk) and malformed files."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mtm_runtime import cli
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import collect, episode_returns, write_hdf5
from mtm_runtime.training.loaders import DatasetError, load_hdf5, read_hdf5, read_metadata
from mtm_runtime.training.sources import load_episodes

REACHER = get_task("reacher")


@pytest.fixture(scope="module")
def reacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = collect(REACHER, "expert", 6, seed=3, action_fraction=0.5)
    return write_hdf5(tmp_path_factory.mktemp("d") / "reacher.hdf5", data, REACHER, "expert", 3, 0.5)


def test_round_trip_layout_and_metadata(reacher_file: Path) -> None:
    with h5py.File(reacher_file) as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations",
                    "infos/goal", "infos/action_present", "infos/episode_id"):
            assert key in f, key
        assert f["observations"].shape == (300, 10) and f["timeouts"][()].sum() == 6
        np.testing.assert_array_equal(f["infos/goal"][()], f["observations"][:, 4:6])
    meta = read_metadata(reacher_file)
    assert meta["task"] == "reacher" and meta["env_id"] == "Reacher-v5" and meta["tier"] == "expert"
    assert meta["seed"] == 3 and meta["reference_returns"] == REACHER.reference_returns
    assert meta["generator_version"] and meta["created"]
    episodes = load_episodes(reacher_file)
    assert len(episodes) == 6
    for ep in episodes:
        assert set(REACHER.modality_widths()) <= set(ep)
        for name, w in REACHER.modality_widths().items():
            assert ep[name].shape == (50, w) and ep[name].dtype == np.float32
            assert np.all(np.isfinite(ep[name]))
        assert ep["returns"][0, 0] == pytest.approx(ep["rewards"].sum(), rel=1e-5)
        assert ep["returns"][-1, 0] == pytest.approx(ep["rewards"][-1, 0])


def test_heteromodal_actions_are_marked_missing(reacher_file: Path) -> None:
    with h5py.File(reacher_file) as f:
        present = f["infos/action_present"][()]
        actions, ids = f["actions"][()], f["infos/episode_id"][()]
    assert present.sum() == 150  # 3 of 6 episodes keep actions
    assert np.all(np.isnan(actions[~present])) and np.all(np.isfinite(actions[present]))
    for i, ep in enumerate(load_episodes(reacher_file)):
        assert ep.present["actions"] == bool(present[ids == i][0])
        if not ep.present["actions"]:
            assert np.all(ep["actions"] == 0.0)


def test_same_result_for_any_worker_count() -> None:
    one = collect("reacher", "medium-replay", 5, seed=11, workers=1, action_fraction=0.4)
    two = collect("reacher", "medium-replay", 5, seed=11, workers=2, action_fraction=0.4)
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
    other = collect("reacher", "medium-replay", 5, seed=12)
    assert not np.array_equal(one["observations"], other["observations"])


def test_label_seed_redraws_the_labelled_episodes_of_the_same_rollouts(tmp_path: Path) -> None:
    draws = [collect(REACHER, "expert", 10, seed=3, action_fraction=0.2, label_seed=s) for s in (0, 1, 2)]
    labelled = [tuple(np.unique(d["infos/episode_id"][d["infos/action_present"]]).tolist()) for d in draws]
    assert all(len(lab) == 2 for lab in labelled) and len(set(labelled)) > 1   # 2 of 10 each, not the same 2
    for d in draws[1:]:
        np.testing.assert_array_equal(d["observations"], draws[0]["observations"])   # same rollouts
    default = collect(REACHER, "expert", 10, seed=3, action_fraction=0.2)
    np.testing.assert_array_equal(default["infos/action_present"],
                                  collect(REACHER, "expert", 10, seed=3, action_fraction=0.2, label_seed=3)["infos/action_present"])
    path = write_hdf5(tmp_path / "d1.hdf5", draws[1], REACHER, "expert", 3, 0.2, label_seed=1)
    assert read_metadata(path)["label_seed"] == 1


def test_tiers_are_ordered_by_score() -> None:
    scores = {tier: np.mean([REACHER.normalised_score(r) for r in episode_returns(collect(REACHER, tier, 8, seed=0))])
              for tier in ("random", "medium", "expert")}
    assert scores["random"] < scores["medium"] < scores["expert"]
    assert scores["expert"] > 80


def test_idp_terminal_episodes_split(tmp_path: Path) -> None:
    task = get_task("inverted_double_pendulum")
    data = collect(task, "random", 3, seed=0)
    path = write_hdf5(tmp_path / "idp.hdf5", data, task, "random", 0)
    episodes = load_hdf5(path)
    assert len(episodes) == 3 and all(ep.terminated for ep in episodes)
    assert "goals" not in episodes[0]


def test_refuses_malformed_files_naming_the_key(reacher_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.hdf5"
    with h5py.File(reacher_file) as src, h5py.File(bad, "w") as dst:
        for k in ("observations", "actions", "terminals", "timeouts"):
            dst[k] = src[k][()]
        src.copy("metadata", dst)
    with pytest.raises(DatasetError, match=r"bad\.hdf5.*'rewards'"):
        load_episodes(bad)
    with h5py.File(bad, "a") as f:
        f["rewards"] = np.zeros(len(f["terminals"]), np.float32)
        del f["metadata"]
    episodes, task = read_hdf5(bad)          # no metadata: a plain D4RL-layout file, layout read from it
    assert task.name == "bad" and not task.env_id and episodes[0]["states"].shape[1] == 10
    with pytest.raises(DatasetError, match="observations"):
        load_hdf5(bad, get_task("hopper"))  # wrong observation width
    with h5py.File(bad, "a") as f:
        del f["actions"]
    with pytest.raises(DatasetError, match=r"bad\.hdf5: missing key 'actions'"):
        load_episodes(bad)
    not_h5 = tmp_path / "x.hdf5"
    not_h5.write_text("hello")
    with pytest.raises(DatasetError, match="x.hdf5"):
        load_episodes(not_h5)


def test_plain_d4rl_file_with_trailing_partial_episode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 25
    path = tmp_path / "d4rl.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 10)).astype(np.float32)
        f["actions"] = rng.normal(size=(n, 2)).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        timeouts = np.zeros(n, bool)
        timeouts[[9, 19]] = True
        f["timeouts"] = timeouts
    episodes = load_hdf5(path, "Reacher-v5")
    assert [ep.length for ep in episodes] == [10, 10, 5]
    np.testing.assert_allclose(episodes[0]["returns"][:, 0], np.arange(10, 0, -1))


def test_cli_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.hdf5"
    rc = cli.main(["collect", "reacher", "--tier", "medium", "--episodes", "2", "--seed", "1", "--quiet", "-o", str(out)])
    assert rc == 0 and "normalised score" in capsys.readouterr().out
    assert len(load_episodes(out)) == 2
    assert cli.main(["collect", "nope", "--tier", "expert", "-o", str(out)]) == 2
