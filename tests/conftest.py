"""Shared test fixtures. Tests live in one folder per layer (``core/``, ``runtime/``, ``export/``,
``sim/``, ``training/``, ``ros/``, and ``project/`` for what spans them: architecture, packaging,
the CLI, benchmarks, the worked example); the helpers they share stay in this folder.

ROS tests: every test gets its own ROS_DOMAIN_ID (derived from the pytest worker pid and a
counter) and discovery stays on localhost, so parallel runs and leftovers never cross-talk.
Child processes started by a test inherit the environment set here.

CPU hog: ``pytest --cpu-hog`` (or ``MTM_TEST_CPU_HOG=1``) runs a busy loop on every core beside
each module whose tests take the ``cpu_hog`` fixture; ``cpu_hog_always`` does so in every run
(the record tests: a recorder must not lose messages on a busy machine).
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Iterator

# One BLAS/OpenMP thread per process in tests: the suite runs ROS nodes, simulators and training
# side by side on two cores, where oversubscribed OpenMP spin-waits make torch 10x slower.
# Child processes (nodes started by tests) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = str(Path(__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parent)
for _path in (REPO, TESTS):   # benchmarks.common (the CPU hog); the shared helpers beside this file
    if _path not in sys.path:  # (ros_harness, fault_helpers, ...) for the tests in the layer folders
        sys.path.insert(0, _path)

from benchmarks.common import CpuHog  # noqa: E402

_counter = itertools.count()


def fresh_domain_id() -> int:
    """A ROS domain id in [1, 101] unlikely to collide with another concurrent run."""
    return 1 + (os.getpid() * 7 + next(_counter)) % 101


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set a private ROS_DOMAIN_ID + localhost discovery for this test (and its children)."""
    domain = str(fresh_domain_id())
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return {"ROS_DOMAIN_ID": domain, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-hog", action="store_true", default=False,
                     help="run a busy loop on every core beside the tests that take the cpu_hog fixture "
                          "(same as MTM_TEST_CPU_HOG=1)")


def cpu_hog_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--cpu-hog")) or os.environ.get("MTM_TEST_CPU_HOG", "") not in ("", "0")


@pytest.fixture(scope="module")
def cpu_hog(request: pytest.FixtureRequest) -> Iterator[CpuHog | None]:
    """A busy loop on every core for the rest of the module, if --cpu-hog / MTM_TEST_CPU_HOG=1 (else None)."""
    if not cpu_hog_requested(request.config):
        yield None
        return
    with CpuHog() as hog:
        yield hog


@pytest.fixture(scope="module")
def cpu_hog_always() -> Iterator[CpuHog]:
    """A busy loop on every core for the rest of the module, in every run."""
    with CpuHog() as hog:
        yield hog


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"cpu hog: {'on' if cpu_hog_requested(config) else 'off'} for cpu_hog tests, "
             f"always on for cpu_hog_always tests ({os.cpu_count()} busy loops)"]
    try:
        import tensorrt  # noqa: F401
        lines.append("tensorrt: importable")
    except Exception as e:  # noqa: BLE001 - report any import failure
        lines.append(f"tensorrt: not importable here ({type(e).__name__}); TensorRT tests are skipped")
    try:
        import torch
        lines.append(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    except Exception:  # noqa: BLE001
        pass
    return lines
