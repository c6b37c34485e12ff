"""Shared test fixtures.

ROS tests: every test gets its own ROS_DOMAIN_ID (derived from the pytest worker pid and a
counter) and discovery stays on localhost, so parallel runs and leftovers never cross-talk.
Child processes started by a test inherit the environment set here.
"""
from __future__ import annotations

import itertools
import os

# One BLAS/OpenMP thread per process in tests: the suite runs ROS nodes, simulators and training
# side by side on two cores, where oversubscribed OpenMP spin-waits make torch 10x slower.
# Child processes (nodes started by tests) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

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


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
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
