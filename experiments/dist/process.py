"""Several processes: the process group torchrun describes, and the collectives the harness uses.

Run the harness on G processes with torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK):
    torchrun --standalone --nproc_per_node=2 -m experiments.train method=lora dist=fsdp
    make experiment METHOD=lora NPROC=2 ARGS="dist=fsdp"

The global batch stays `batch_size` (each rank takes its contiguous slice of every batch, see
`batching.EpochOrder`), so the loss trajectory matches one process. Evaluation shards each
split and gathers predictions, so every example counts exactly once. Only rank 0 writes the run
folder, the record and W&B; checkpoints and exports gather full tensors onto rank 0.

What differs between `dist=none`, `ddp` and `fsdp` (wrapping the model, a checkpoint's gather
and restore, the exit path) is each one's `experiments.dist.strategy.Strategy`; sharded
evaluation is in `experiments.harness.evaluation`; the NPROC check before torchrun starts is
`experiments.dist.launch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from experiments.dist import launch
from experiments.harness.config import UserError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, strategy and backend."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The rank that writes the run folder, the record and W&B."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """The record's `dist` section."""
        return {"world_size": self.world, "strategy": self.strategy, "backend": self.backend}


SINGLE = DistInfo()


def env_world() -> int:
    """WORLD_SIZE as torchrun set it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_world() -> int:
    """LOCAL_WORLD_SIZE: the processes torchrun started on this machine (several machines: a
    part of WORLD_SIZE; without it, WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", env_world()))


def env_rank() -> int:
    """RANK as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup(how: str, device: torch.device, batch_size: int) -> DistInfo:
    """Join the process group torchrun describes (none without torchrun) for strategy `how`
    (`experiments.dist.strategy.resolve_name`'s, checked by the config); checks come first."""
    world = env_world()
    if world == 1:
        return SINGLE
    # Each machine gives its own processes a core or device each: 2 nodes x 8 GPUs is 16
    # processes, 8 per machine.
    launch.check_nproc(env_local_world(), device.type)
    if batch_size % world:
        fit = batch_size // world * world or world
        raise UserError(f"batch_size={batch_size} is not divisible by {world} processes; the "
                        f"global batch is split evenly (e.g. batch_size={fit})")
    backend = "nccl" if device.type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), world, local, how, backend)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """On CUDA each rank owns the device of its local rank."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def cleanup(sync: bool = False) -> None:
    """Leave the process group (a no-op without one); `sync` waits for every rank first."""
    if dist.is_initialized():
        if sync:
            # Without it, a rank that finishes first tears down its gloo threads while rank 0
            # still writes the record, and the process can abort at exit (seen as SIGABRT).
            dist.barrier()
        dist.destroy_process_group()


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's rows concatenated (ranks may hold different numbers of rows)."""
    if not info.enabled:
        return t
    return torch.cat(gather_objects(t.cpu(), info))


def global_mean(loss: torch.Tensor, info: DistInfo) -> float:
    """The global batch's mean loss: each rank's loss is already its share of that mean (the
    harness divides each rank's sum by the global rows over the world size), so average them."""
    if not info.enabled:
        return loss.item()
    t = loss.detach().double().reshape(1).to(loss.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t[0]) / info.world
