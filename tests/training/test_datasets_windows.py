"""WindowSampler and the train/validation split (numpy only, property tests)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtm_runtime.spec import TrajectorySpec
from mtm_runtime.training.loaders import Episode, WindowSampler, split_episodes


def _episode(eid: int, L: int, actions: bool = True) -> Episode:
    t = np.arange(L, dtype=np.float32)[:, None]
    return Episode({"states": np.concatenate([np.full((L, 1), eid, np.float32), t], 1),
                    "actions": (t + 0.5) if actions else np.zeros((L, 1), np.float32),
                    "returns": np.ones((L, 1), np.float32), "rewards": np.ones((L, 1), np.float32)},
                   {"states": True, "actions": actions, "returns": True, "rewards": True})


SPEC = TrajectorySpec.create(5, states=2, actions=1, returns=1, goals=2)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), horizon=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_windows_never_cross_episodes(lengths: list[int], horizon: int, seed: int) -> None:
    spec = TrajectorySpec.create(horizon, states=2, actions=1, returns=1)
    episodes = [_episode(i, L, actions=i % 2 == 0) for i, L in enumerate(lengths)]
    x, present = WindowSampler(episodes, spec, seed=seed).sample(16)
    assert x.shape == (16, horizon, 4) and present.shape == (16, horizon, 3)
    assert np.all(np.isfinite(x))
    for b in range(16):
        rows = present[b, :, 0] == 1
        ids, steps = x[b, rows, 0], x[b, rows, 1]
        assert len(set(ids.tolist())) == 1                      # one episode per window
        assert np.all(np.diff(steps) == 1)                       # contiguous steps
        L = lengths[int(ids[0])]
        if L < horizon:                                          # right-aligned short episode
            assert rows.tolist() == [False] * (horizon - L) + [True] * L
            assert np.all(x[b, ~rows] == 0) and np.all(present[b, ~rows] == 0)
        else:
            assert rows.all()
        act_col = spec.index("actions")
        assert np.all(present[b, rows, act_col] == float(int(ids[0]) % 2 == 0))
        assert np.all(x[b, present[b, :, act_col] == 0, spec.slice("actions")] == 0)


def test_missing_modality_and_seeded_determinism() -> None:
    episodes = [_episode(i, 9) for i in range(4)]
    a = WindowSampler(episodes, SPEC, seed=5).sample(8)
    b = WindowSampler(episodes, SPEC, seed=5).sample(8)
    np.testing.assert_array_equal(a[0], b[0])
    x, present = a
    assert np.all(present[..., SPEC.index("goals")] == 0) and np.all(x[..., SPEC.slice("goals")] == 0)
    assert np.all(present[..., SPEC.index("states")] == 1)


def test_all_starts_are_reachable() -> None:
    sampler = WindowSampler([_episode(0, 7), _episode(1, 2)], SPEC, seed=0)
    assert sampler.num_windows == 3 + 1
    eps, starts = sampler.sample_index(400)
    assert set(zip(eps.tolist(), starts.tolist())) == {(0, 0), (0, 1), (0, 2), (1, -3)}  # short: right-aligned


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), horizon=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_start_windows_end_at_every_step_with_the_past_absent(lengths: list[int], horizon: int, seed: int) -> None:
    spec = TrajectorySpec.create(horizon, states=2, actions=1, returns=1)
    episodes = [_episode(i, L) for i, L in enumerate(lengths)]
    sampler = WindowSampler(episodes, spec, seed=seed, start_windows=True)
    assert sampler.num_windows == sum(lengths)
    eps, starts = sampler.sample_index(50 * sum(lengths))
    ends = set(zip(eps.tolist(), (starts + horizon - 1).tolist()))
    assert ends == {(e, t) for e, L in enumerate(lengths) for t in range(L)}  # one window per step
    for e, start in zip(eps[:40].tolist(), starts[:40].tolist()):
        x, present = sampler.window(e, start)
        rows = present[:, 0] == 1
        k = int(rows.sum())
        assert rows.tolist() == [False] * (horizon - k) + [True] * k       # the past before step 0 is absent
        assert k == min(horizon, start + horizon) and np.all(x[~rows] == 0)
        assert x[rows, 1].tolist() == list(range(max(start, 0), start + horizon))
    with pytest.raises(IndexError, match="no window starting at"):
        sampler.window(0, -horizon)


@pytest.mark.parametrize("start_windows", [False, True])
def test_normalised_sampler_gathers_the_same_windows(start_windows: bool) -> None:
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.training.pipeline import NormalisedSampler

    spec = TrajectorySpec.create(4, states=2, actions=1, returns=1)
    episodes = [_episode(i, L, actions=i != 1) for i, L in enumerate([9, 2, 5, 1])]
    fast = NormalisedSampler(episodes, spec, Normaliser.identity(spec), start_windows=start_windows)
    x, present = fast.sample(64, np.random.default_rng(3))
    slow = WindowSampler(episodes, spec, seed=0, start_windows=start_windows)
    slow.rng = np.random.default_rng(3)
    eps, starts = slow.sample_index(64)
    for b, (e, st0) in enumerate(zip(eps.tolist(), starts.tolist())):
        xw, pw = slow.window(e, st0)
        np.testing.assert_array_equal(present[b], pw)
        np.testing.assert_allclose(x[b], xw * pw[:, np.repeat(np.arange(3), spec.widths)], atol=1e-6)


def test_labelled_share_sets_the_fraction_of_action_labelled_windows() -> None:
    # 1 labelled episode among 20: uniform windows are ~5% labelled; share 0.5 makes at least half
    episodes = [_episode(i, 9, actions=i == 0) for i in range(20)]
    sampler = WindowSampler(episodes, SPEC, seed=0)
    a = SPEC.index("actions")
    _, present = sampler.sample(400)
    uniform = present[:, -1, a].mean()
    sampler.set_labelled_share(0.5)
    eps, starts = sampler.sample_index(400)
    assert np.all(eps[:200] == 0) and set(starts[:200].tolist()) == set(range(9 - SPEC.horizon + 1))
    _, present = sampler.sample(400)
    assert uniform < 0.15 and 0.5 <= present[:, -1, a].mean() < 0.6
    with pytest.raises(ValueError, match="labelled_share"):
        sampler.set_labelled_share(1.0)
    everyone = WindowSampler([_episode(i, 9) for i in range(3)], SPEC, seed=0)
    everyone.set_labelled_share(0.5)  # all labelled: nothing to balance, stays uniform
    assert everyone.labelled_share == 0.0


def test_nan_never_reaches_the_batch() -> None:
    ep = _episode(0, 6)
    ep["actions"][:] = np.nan
    ep.present["actions"] = False
    x, present = WindowSampler([ep], SPEC, seed=0).sample(3)
    assert np.all(np.isfinite(x)) and np.all(present[..., SPEC.index("actions")] == 0)


def test_split_is_seeded_disjoint_and_complete() -> None:
    episodes = [_episode(i, 3) for i in range(10)]
    train, val = split_episodes(episodes, 0.2, seed=1)
    train2, val2 = split_episodes(episodes, 0.2, seed=1)
    ids = lambda eps: [int(e["states"][0, 0]) for e in eps]  # noqa: E731
    assert ids(val) == ids(val2) and len(val) == 2 and len(train) == 8
    assert sorted(ids(train) + ids(val)) == list(range(10))
    with pytest.raises(ValueError):
        WindowSampler([], SPEC)


def test_labelled_only_split_keeps_the_labelled_episodes_of_the_whole_files_split() -> None:
    # the heteromodal comparison: the labelled-only models must train on exactly the labelled
    # episodes that the model trained on the whole file sees (not re-split the labelled subset,
    # which held one of two labelled episodes out for validation)
    episodes = [_episode(i, 3, actions=i in (2, 5, 7)) for i in range(40)]
    ids = lambda eps: [int(e["states"][0, 0]) for e in eps]  # noqa: E731
    train_all, val_all = split_episodes(episodes, 0.1, seed=0)
    train_lab, val_lab = split_episodes(episodes, 0.1, seed=0, labelled_only=True)
    assert ids(train_lab) == [i for i in ids(train_all) if i in (2, 5, 7)]
    assert ids(val_lab) == [i for i in ids(val_all) if i in (2, 5, 7)]
    assert all(e.present["actions"] for e in train_lab + val_lab) and len(train_lab) + len(val_lab) == 3
