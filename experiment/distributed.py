"""Data-parallel training of one model over the processes `torchrun` starts (docs/RUNNING.md).

    torchrun --standalone --nproc_per_node K -m experiment.main CONFIG.yaml

starts K ranks of the same command. They do the same jobs in the same order, each model trained by
all K at once: every batch of B samples is split over the ranks (rank r takes samples r, r+K, …),
each rank computes its share of the loss, and DistributedDataParallel sums the gradients, so an
optimizer step sees the gradient of the full batch's mean loss. Rank 0 alone takes the job locks,
chooses the next job and sends it to the others, evaluates (validation and test metrics, computed
once) and writes every file; the others only compute. Random numbers that must agree (batch order,
initial weights) come from the same seeds on every rank; those that must not (Hutchinson noise) are
reseeded per rank.

The rendezvous (address, port, world size, rank) comes from torchrun's environment variables; the
backend is NCCL on GPUs and gloo on CPUs. A single process is the `SINGLE` group of one rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

# Rank 0 may wait for jobs that other commands hold (every POLL_SECONDS it tells the other ranks so),
# but a single job's evaluation and file writes on rank 0 can take long on big models: a generous
# timeout for the collectives keeps the other ranks from giving up meanwhile.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes that train each model together."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0: takes the locks, chooses the jobs, evaluates and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's samples of a batch (or of batch indices): every world_size-th from `rank`."""
        return batch[self.rank::self.world_size]

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` for training: wrapped in DistributedDataParallel when there are several ranks
        (which also copies rank 0's parameters to the others)."""
        if not self.parallel:
            return model
        device = next(model.parameters()).device
        device_ids = [device] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        if not self.parallel:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_leader(self, value: object) -> object:
        """Rank 0's `value`, on every rank (a picklable object)."""
        if not self.parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


SINGLE = Ranks()


def ranks_from_environment(environment: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK; SINGLE outside torchrun."""
    if int(environment.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    return Ranks(int(environment["RANK"]), int(environment["WORLD_SIZE"]), int(environment.get("LOCAL_RANK", "0")))


def join(ranks: Ranks, device: torch.device) -> torch.device:
    """Joins the process group of `ranks` (torchrun's rendezvous: MASTER_ADDR, MASTER_PORT) and
    returns this rank's device: its own GPU, cuda:LOCAL_RANK, when the config asks for a GPU."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def leave(ranks: Ranks) -> None:
    if ranks.parallel and dist.is_initialized():
        dist.destroy_process_group()
