"""``--self-label-at N``: at step N the training run gives its action-free episodes the model's own
inverse-dynamics estimates as actions, and they count as labelled from then on.

``self_label`` runs the model being trained (eval mode, fp32) through
``NormalisedSampler.fill_actions`` and writes the estimates to ``self_labels.safetensors`` in the
run's directory; ``load_self_labels`` puts them back into a fresh sampler, so a ``--resume`` past
step N trains on exactly the labels the uninterrupted run had. (``training/relabel.py`` is the
offline counterpart: a trained ``Policy`` fills in the actions of a dataset file.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtm_runtime.model import MTM
from mtm_runtime.spec import ACTIONS
from mtm_runtime.training.pipeline import NormalisedSampler

SELF_LABELS = "self_labels.safetensors"   # --self-label-at: the estimated actions, for --resume


def self_label(mtm: MTM, sampler: NormalisedSampler, device: torch.device, out: Path | None) -> int:
    """``sampler.fill_actions`` with ``mtm`` in eval mode (fp32); writes the estimates to
    ``out/SELF_LABELS`` (rank 0 passes ``out``). Returns the number of steps filled."""
    from safetensors.numpy import save_file

    mtm.eval()

    def predict(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return mtm(torch.from_numpy(x).to(device), torch.from_numpy(mask.astype(np.float32)).to(device)).cpu().numpy()

    n = sampler.fill_actions(predict)
    mtm.train()
    if out is not None:
        rows = sampler.action_free_rows()
        out.mkdir(parents=True, exist_ok=True)
        actions = np.ascontiguousarray(sampler.flat_x[rows][:, sampler.spec.slice(ACTIONS)])  # safetensors ignores strides
        save_file({"rows": rows.astype(np.int64), "actions": actions}, str(out / SELF_LABELS))
    return n


def load_self_labels(out: Path, sampler: NormalisedSampler) -> None:
    """Put the estimates of an earlier ``self_label`` back into ``sampler`` (``--resume`` past it)."""
    from safetensors.numpy import load_file

    path = out / SELF_LABELS
    if not path.exists():
        raise FileNotFoundError(f"{path}: --resume past --self-label-at needs the labels written at that step")
    saved, rows = load_file(str(path)), sampler.action_free_rows()
    if not np.array_equal(saved["rows"], rows):
        raise ValueError(f"{path}: written for other training episodes ({len(saved['rows'])} rows, these have {len(rows)})")
    sampler.set_actions(rows, saved["actions"])
