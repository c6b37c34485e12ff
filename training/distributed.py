"""Data-parallel training from torchrun's environment (``training/train.py``).

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` ...; without them a run
is one process (world 1) and nothing here touches ``torch.distributed``. One device per process
(``cuda:<LOCAL_RANK>`` on CUDA), gloo on CPU, nccl on CUDA; only rank 0 writes files or prints.
The model is wrapped in DDP through ``TrainForward`` so that DDP's hooks see the training
forward pass, and every rank starts from rank 0's weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from mtm_runtime.model import MTM
from mtm_runtime.trainer import resolve_device


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    world: int                 # number of processes
    rank: int                  # global rank (0 writes)
    local_rank: int            # rank on this host (picks the GPU)
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def use_cuda(self) -> bool:
        return self.device.type == "cuda"


def setup(device: str, threads: int) -> Ranks:
    """Read torchrun's environment, pick the device (``mtm_runtime.trainer.resolve_device``), set
    the CPU thread count (``threads`` > 0) and, with several processes, join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if threads > 0:
        torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Ranks(world, rank, local_rank, dev)


class TrainForward(nn.Module):
    """Makes ``MTM.forward_train`` the module's ``forward`` so DDP's hooks see it."""

    def __init__(self, mtm: MTM) -> None:
        super().__init__()
        self.mtm = mtm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mtm.forward_train(x, mask)


def training_module(mtm: MTM, ranks: Ranks) -> nn.Module:
    """``TrainForward(mtm)``, in DDP when the run has several processes."""
    net: nn.Module = TrainForward(mtm)
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[ranks.device.index] if ranks.use_cuda else None)
    return net


def broadcast_parameters(mtm: MTM, ranks: Ranks) -> None:
    """Every rank starts from rank 0's weights (after rank 0 may have resumed them)."""
    if ranks.world > 1:
        for p in mtm.parameters():
            dist.broadcast(p.data, 0)


def shutdown(ranks: Ranks) -> None:
    """Wait for every rank, then leave the process group (several processes only)."""
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
