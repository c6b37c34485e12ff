"""The lock (requirements-lock.txt, written by `make lock`) pins exactly what requirements-dev.txt
and setup.py ask for, and is what this environment runs. setup.py is read with `ast`, never
imported (importing it would run setup())."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tools.freeze_lock import TOOLING, closure, installed, read_requirements

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "requirements-lock.txt"
DEV_FILE = ROOT / "requirements-dev.txt"
TORCH = "2.13.0"
REFRESH = "edit requirements-dev.txt / setup.py, then run `make lock`"


def read_lock() -> dict[NormalizedName, Version]:
    """Canonical name -> pinned version; every line must be one exact ``name==version`` pin."""
    pins: dict[NormalizedName, Version] = {}
    for req in read_requirements(LOCK_FILE):
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, \
            f"requirements-lock.txt: {req} is not an exact pin"
        assert req.marker is None and not req.extras, f"requirements-lock.txt: {req}: plain pins only"
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements-lock.txt: {req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def _setup_call_keyword(tree: ast.Module, keyword: str) -> ast.expr:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    assert len(calls) == 1, "setup.py: expected one setup(...) call"
    return next(k.value for k in calls[0].keywords if k.arg == keyword)


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """(install_requires, EXTRAS) of setup.py, as literals."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    extras = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and [getattr(t, "id", None) for t in n.targets] == ["EXTRAS"])
    return ast.literal_eval(_setup_call_keyword(tree, "install_requires")), extras


LOCK = read_lock()
INSTALL_REQUIRES, EXTRAS = setup_requirements()


def _unmet(requirements: list[str | Requirement], where: str) -> list[str]:
    problems = []
    for r in map(Requirement, map(str, requirements)):
        pin = LOCK.get(canonicalize_name(r.name))
        if pin is None:
            problems.append(f"{where}: {r} is not in requirements-lock.txt")
        elif not r.specifier.contains(pin, prereleases=True):
            problems.append(f"{where}: {r} is not satisfied by the lock's {r.name}=={pin}")
    return problems


def test_every_line_of_the_lock_is_an_exact_pin() -> None:
    assert len(LOCK) > 50  # read_lock asserts the form of each line
    assert {canonicalize_name(t) for t in TOOLING} <= set(LOCK)
    assert "mtm-runtime" not in LOCK  # the editable install itself is not locked


def test_requirements_dev_is_pinned_and_satisfied() -> None:
    problems = _unmet(read_requirements(DEV_FILE), "requirements-dev.txt")
    assert not problems, "\n".join(problems + [REFRESH])


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_setup_extras_are_pinned_and_satisfied(extra: str) -> None:
    problems = _unmet(EXTRAS[extra], f"setup.py extra {extra!r}")
    assert not problems, "\n".join(problems + [REFRESH])


def test_install_requires_is_pinned_and_satisfied() -> None:
    problems = _unmet(INSTALL_REQUIRES, "setup.py install_requires")
    assert not problems, "\n".join(problems + [REFRESH])


def test_torch_is_pinned_to_the_build_on_disk() -> None:
    assert LOCK["torch"] == Version(TORCH)
    assert f"torch=={TORCH}" in LOCK_FILE.read_text().splitlines()
    assert [str(r) for r in read_requirements(DEV_FILE) if r.name == "torch"] == [f"torch=={TORCH}"]


def test_robots_install_without_the_ros_wheels() -> None:
    """ROS 2 comes from the system on a robot: only the `ros` extra names the PyPI ROS wheels."""
    ros = [r for r in EXTRAS["ros"] if Requirement(r).name.startswith("ros-")]
    assert ros and len(ros) == len(EXTRAS["ros"])
    for where, reqs in [("install_requires", INSTALL_REQUIRES)] + [
            (f"extra {k!r}", v) for k, v in EXTRAS.items() if k not in ("ros", "all")]:
        assert not [r for r in reqs if Requirement(r).name.startswith("ros-")], where


def test_this_environment_runs_exactly_the_lock() -> None:
    """Walking requirements-dev.txt's dependency tree through the installed metadata reaches
    exactly the locked names at the locked versions: the lock is complete (nothing it needs is
    missing from it) and this venv was installed from it (`make` reinstalls when the lock changes)."""
    roots = read_requirements(DEV_FILE) + [Requirement(t) for t in TOOLING]
    try:
        reached = closure(roots, installed())
    except KeyError as e:
        pytest.fail(f"{e.args[0]} in this environment: run `make test` (it installs the lock)")
    have = {n: Version(Version(d.version).public) for n, d in reached.items()}
    missing = sorted(set(have) - set(LOCK))
    extra = sorted(set(LOCK) - set(have))
    differ = sorted(f"{n}: installed {have[n]}, locked {LOCK[n]}" for n in set(have) & set(LOCK) if have[n] != LOCK[n])
    assert not (missing or extra or differ), (
        f"pulled in but not locked: {missing}; locked but not pulled in: {extra}; versions: {differ}; "
        f"{REFRESH} (or `make test` to install the lock)")


def test_make_installs_the_lock_and_can_refresh_it(tmp_path: Path) -> None:
    """The venv stamp depends on the lock and installs it; `make lock` freezes a fresh venv (both
    read with `make -n`: nothing runs)."""
    venv = tmp_path / "venv"
    dry = subprocess.run(["make", "-n", "-p", f"VENV={venv}", f"{venv}/.installed"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rule = next(line for line in dry.splitlines() if line.startswith(f"{venv}/.installed: ") and "=" not in line)
    assert set(rule.split(":", 1)[1].split()) == {"requirements-lock.txt", "setup.py"}
    assert f"{venv}/bin/python -m pip install -q -r requirements-lock.txt" in dry.splitlines()
    lock = subprocess.run(["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m pip install -q -r requirements-dev.txt" in lock
    assert "tools/freeze_lock.py requirements-dev.txt > requirements-lock.txt.new" in lock
