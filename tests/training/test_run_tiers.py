"""Dataset tiers from a learning run (training/run_tiers.py): real ARS on real MuJoCo Hopper."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from mtm_runtime.sim.ars import evaluate_iterate, search
from mtm_runtime.sim.learning_run import ARSConfig, has_run, load_run
from mtm_runtime.sim.tasks import get_task
from mtm_runtime.training.datasets import write_hdf5
from mtm_runtime.training.loaders import read_hdf5
from mtm_runtime.training.run_tiers import RUN_TIERS, chosen_iterates, collect_from_run, collect_tier


@pytest.fixture(scope="module")
def tiny_run():
    cfg = ARSConfig(directions=2, top=1, shift=1.0, eval_every=1, eval_episodes=2)
    return search("hopper", iterations=4, cfg=cfg, seed=3, workers=1, log=lambda _s: None)


def test_tiers_come_from_the_iterates_the_run_chose(tiny_run) -> None:
    task = get_task("hopper")
    it = chosen_iterates(tiny_run, task)
    curve = dict(tiny_run.curve())
    assert curve[it["expert"]] == max(curve.values())
    target = task.reference_returns["random"] + (curve[it["expert"]] - task.reference_returns["random"]) / 3
    assert evaluate_iterate(tiny_run, it["medium"]) >= target
    assert all(evaluate_iterate(tiny_run, i) < target for i in range(1, it["medium"]))   # the first one that reaches it
    expert, meta = collect_from_run(task, tiny_run, "expert", 3, seed=0)
    medium, _ = collect_from_run(task, tiny_run, "medium", 3, seed=0)
    mixed, _ = collect_from_run(task, tiny_run, "medium-expert", 4, seed=0)
    assert len(expert) == 3 and len(mixed) == 4
    assert meta["iterates"] == it and meta["learning_curve"] == tiny_run.curve()
    # medium-expert: even episodes medium, odd expert, on the reset seeds of the plain tiers
    assert np.array_equal(mixed[0]["observations"][0], medium[0]["observations"][0])
    assert np.array_equal(mixed[1]["observations"][0], expert[1]["observations"][0])


def test_medium_replay_is_every_rollout_up_to_the_medium_iterate(tiny_run, tmp_path) -> None:
    """The replayed rollouts are the run's own (same returns as recorded, in the run's order),
    and the written file carries the learning curve and the chosen iterates."""
    task = get_task("hopper")
    eps, meta = collect_from_run(task, tiny_run, "medium-replay", 999, seed=0)
    k = meta["iterates"]["medium"]
    assert meta["replayed_iterations"] == k and len(eps) == 2 * 2 * k
    assert meta["replay_return_mismatches"] == 0
    recorded = tiny_run.returns[:k].reshape(-1)
    assert [float(e["rewards"].sum(dtype=np.float64)) for e in eps] == pytest.approx(list(recorded), rel=1e-5)


def test_collect_tier_writes_a_file_the_loader_reads_with_its_provenance(tmp_path) -> None:
    """Through the one entry point, on the bundled Hopper run: 2 episodes of the medium tier,
    1 of 2 labelled; the HDF5 metadata names the run, its curve and iterates."""
    if not has_run("hopper"):
        pytest.fail("the bundled Hopper learning run is missing (sim/learning_runs/hopper_ars.h5)")
    task = get_task("hopper")
    data, meta = collect_tier(task, "medium", 2, seed=0, action_fraction=0.5)
    path = write_hdf5(tmp_path / "m.hdf5", data, task, "medium", 0, 0.5, extra=meta)
    with h5py.File(path) as f:
        attrs = dict(f["metadata"].attrs)
    assert attrs["behaviour"] == "ARS learning run" and "learning_curve" in attrs
    assert '"medium": %d' % chosen_iterates(load_run("hopper"), task)["medium"] in attrs["iterates"]
    episodes, _ = read_hdf5(path)
    assert len(episodes) == 2 and sum(ep.labelled for ep in episodes) == 1
    assert set(RUN_TIERS) == {"expert", "medium", "medium-replay", "medium-expert"}


@pytest.mark.parametrize("name", ["hopper", "walker2d", "halfcheetah"])
def test_bundled_learning_runs_have_a_medium_iterate_well_below_the_expert(name: str) -> None:
    """The medium policy is a partly trained one: at a third of the way (or more) but clearly
    short of the final iterate, and found before the last third of the run."""
    run = load_run(name)
    task = get_task(name)
    it = chosen_iterates(run, task)
    lo = task.reference_returns["random"]
    medium = evaluate_iterate(run, it["medium"])
    assert medium >= lo + (run.expert_return() - lo) / 3
    assert task.normalised_score(medium) < 70
    assert it["medium"] < 2 * run.iterations / 3
