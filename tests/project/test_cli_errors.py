"""A user's mistake on the command line is one line and exit code 2, before anything runs: counts
that cannot be (``--episodes -1``, ``--steps -5``, ``eval --episodes 0`` without ``--data``), and an offline-RL run on a file that is not a
dataset."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtm_runtime import cli

BAD_COUNTS = [
    (["toy", "--steps", "-5"], "argument --steps: must be >= 1, got -5"),
    (["toy", "--horizon", "1"], "argument --horizon: must be >= 2, got 1"),
    (["eval", "models/reacher_embedded", "--episodes", "-1"], "argument --episodes: must be >= 0, got -1"),
    (["eval", "models/reacher_embedded", "--batch", "x"], "argument --batch: expected an integer, got 'x'"),
    (["collect", "reacher", "--tier", "expert", "-o", "x.hdf5", "--workers", "0"], "argument --workers: must be >= 1"),
    (["rollout", "models/reacher_embedded", "-o", "out", "--episodes", "-1"], "argument --episodes: must be >= 1"),
]


@pytest.mark.parametrize("argv,match", BAD_COUNTS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_COUNTS])
def test_a_count_that_cannot_be_is_argparses_one_line(argv: list[str], match: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and match in err[-1] and not any("Traceback" in line for line in err), err


def test_offline_rl_on_a_file_that_is_no_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5\n")
    for argv, match in ((["--data", str(junk)], "not an HDF5 file"), (["--data", str(tmp_path / "none.hdf5")], "no such file"),
                        ([], "--data is required"),
                        (["--data", str(junk), "--representation", "pixels"], "--representation must be one of")):
        assert cli.main(["offline-rl", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("mtm offline-rl: ") and match in err, err


def test_eval_with_nothing_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "models/reacher_embedded", "--episodes", "0"]) == 2   # it printed nothing and exited 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to do" in err, err


def test_eval_of_something_that_is_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"weights?\n")
    for path, match in ((junk, "expected a checkpoint or baseline directory"), (tmp_path / "none", "no such file")):
        assert cli.main(["eval", str(path)]) == 2   # it said "no simulator for this checkpoint"
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


def test_eval_on_an_env_that_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "models/reacher_embedded", "--env", "NoSuchEnv-v0"]) == 2
    err = capsys.readouterr().err.strip()   # it said "it was trained on 'NoSuchEnv-v0'"
    assert len(err.splitlines()) == 1 and "--env 'NoSuchEnv-v0': unknown environment" in err, err
