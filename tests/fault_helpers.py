"""Shared pieces of the fault-injection tests: a scriptable Backend (public interface only), tiny
checkpoints, diagnostics timing, processes to kill, and a results table the tests append to
(``FAULT_RESULTS``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mtm_runtime.backends.base import Backend
from mtm_runtime.spec import TrajectorySpec

REPO = Path(__file__).resolve().parents[1]
#: Where measurements are appended (one JSON line per scenario) for the report table.
RESULTS_FILE = Path(os.environ.get("MTM_FAULT_RESULTS", "/tmp/mtm_fault_results.jsonl"))


def popen_logged(args: list[str], log: Path) -> subprocess.Popen:
    """``python ARGS`` in the repository, in its own session (a group to signal), output to ``log``."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=os.environ.copy())


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of ``p`` and reap it (SIGKILL if it outlives 5 s)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


class FaultyBackend(Backend):
    """A Backend whose output copies the input window; ``behaviour`` (class level) injects faults:
    ``raise`` (BackendError-like RuntimeError), ``delay_s`` (sleep, overrun), ``nan`` (NaN output)."""

    name = "faulty-test"
    behaviour: dict[str, Any] = {"raise": False, "delay_s": 0.0, "nan": False}

    def __init__(self, spec: TrajectorySpec, batch_size: int = 1) -> None:
        super().__init__(spec, batch_size)
        self._out = np.zeros(self.output_shape, np.float32)

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b = type(self).behaviour
        if b.get("delay_s"):
            time.sleep(b["delay_s"])
        if b.get("raise"):
            raise RuntimeError("injected backend failure")
        np.multiply(x, 0.5, out=self._out)
        if b.get("nan"):
            self._out.fill(np.nan)
        return self._out


def tiny_checkpoint(directory: Path, states: int, actions: int, bound: float = 1.0, provenance: dict | None = None,
                    horizon: int = 4) -> Path:
    """An untrained small MTM checkpoint with ``states``/``actions`` widths (plumbing only)."""
    import torch

    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import MTM, MTMConfig
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.safety import ActionLimits

    spec = TrajectorySpec.create(horizon, states=states, actions=actions)
    torch.manual_seed(0)
    model = MTM(spec, MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2))
    return save_checkpoint(directory, model, Normaliser.identity(spec), ActionLimits.symmetric(bound, actions),
                           provenance={"note": "fault-test checkpoint", **(provenance or {})})


def record(scenario: str, **values: Any) -> None:
    """Append one measurement line (best effort; the tests' asserts are what count)."""
    try:
        with RESULTS_FILE.open("a") as f:
            f.write(json.dumps({"scenario": scenario, **values}) + "\n")
    except OSError:
        pass
