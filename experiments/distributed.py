"""Several processes: DDP for every method, FSDP2 for full fine-tuning and LoRA.

Run the harness on G processes with torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK):
    torchrun --standalone --nproc_per_node=2 -m experiments.train method=lora dist=fsdp
    make experiment METHOD=lora NPROC=2 ARGS="dist=fsdp"

The global batch stays `batch_size` (each rank takes its contiguous slice of every batch, see
`checkpoint.EpochOrder`), so the loss trajectory matches one process. Evaluation shards each
split and gathers predictions, so every example counts exactly once. Only rank 0 writes the run
folder, the record and W&B; checkpoints and exports gather full tensors onto rank 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from experiments.config import DIST_STRATEGIES as STRATEGIES
from experiments.config import UserError


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


def env_rank() -> int:
    """RANK as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def capacity(device_type: str) -> tuple[int, str]:
    """How many processes this machine can give one core or device each."""
    if device_type == "cuda":
        return torch.cuda.device_count(), "CUDA devices"
    try:
        return len(os.sched_getaffinity(0)), "CPU cores"
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1, "CPU cores"


def check_nproc(nproc: int, device_type: str) -> None:
    """UserError when `nproc` processes would share cores or devices."""
    if nproc < 1:
        raise UserError(f"NPROC={nproc} must be >= 1")
    have, what = capacity(device_type)
    if nproc > have:
        raise UserError(f"NPROC={nproc} processes but this machine has {have} {what}; "
                        f"use NPROC<={have}")


def strategy(requested: str) -> str:
    """The strategy a run uses: under torchrun (WORLD_SIZE>1) `none` means DDP."""
    return "ddp" if requested == "none" and env_world() > 1 else requested


def setup(requested: str, device: torch.device, batch_size: int) -> DistInfo:
    """Join the process group torchrun describes (none without torchrun); checks come first."""
    world, how = env_world(), strategy(requested)
    if how not in STRATEGIES:
        raise UserError(f"dist={how!r} is not one of: {', '.join(STRATEGIES)}")
    if world == 1:
        return SINGLE
    check_nproc(world, device.type)
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


def global_mean(loss: torch.Tensor, n: int, info: DistInfo) -> tuple[float, int]:
    """(mean loss over the whole global batch, its size): weighted by each rank's rows."""
    if not info.enabled:
        return loss.item(), n
    t = torch.tensor([loss.detach().double().item() * n, float(n)], dtype=torch.float64,
                     device=loss.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t[0] / t[1]), int(t[1])


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: items of each outermost ModuleList of same-type modules."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in taken) or not isinstance(module, nn.ModuleList):
            continue
        items = list(module)
        if items and len({type(m) for m in items}) == 1 and list(items[0].parameters()):
            blocks.extend(items)
            taken.append(name)
    return blocks


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` per transformer block, then the root)."""
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # Every trainable parameter reaches the loss in each method, so DDP needs no extra
        # pass to find unused ones.
        return DistributedDataParallel(model, device_ids=ids)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 modifies the model in place: itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def shards(info: DistInfo) -> int:
    """How many ways weights, gradients and optimizer state are split (FSDP: G)."""
    return info.world if info.strategy == "fsdp" else 1


PER_RANK_KEYS = ("weights_bytes", "grads_bytes", "optimizer_bytes", "ledger_bytes",
                 "activations_peak_bytes", "peak_bytes")


def per_rank(memory: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Adds `per_rank`: each rank's ledger (its local shards) to rank 0's memory section."""
    if info.enabled:
        mine = {"rank": info.rank, **{k: memory.get(k) for k in PER_RANK_KEYS}}
        memory["per_rank"] = gather_objects(mine, info)
    return memory


def eval_batches(n: int, batch: int, rank: int, world: int) -> tuple[list[list[int]], list[int]]:
    """This rank's index lists per global eval batch, and how many of each are real rows.

    Every rank gets a batch for every global batch (an empty share runs one padding row) so
    all ranks make the same number of forward calls: FSDP all-gathers inside each."""
    batches, real = [], []
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        size = -(-len(idx) // world)
        mine = idx[rank * size:(rank + 1) * size]
        real.append(len(mine))
        batches.append(mine or idx[:1])
    return batches, real


def eval_loader(dataset: Any, batch: int, collate: Any, info: DistInfo,
                generator: torch.Generator) -> torch.utils.data.DataLoader:
    """A loader over this rank's share of a split; `real_sizes` marks padding rows."""
    from torch.utils.data import DataLoader

    if not info.enabled:
        return DataLoader(dataset, batch_size=batch, collate_fn=collate, generator=generator)
    batches, real = eval_batches(len(dataset), batch, info.rank, info.world)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, generator=generator)
    loader.real_sizes = real
    return loader


def eval_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """What evaluation calls: the bare model under DDP (no collective in its forward)."""
    return unwrap(model) if info.strategy == "ddp" else model


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer,
                info: DistInfo) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(trainable weights, optimizer state) as full CPU tensors on rank 0; None elsewhere.

    Under FSDP every rank takes part in the gather; the optimizer state is then keyed by
    parameter name (torch.distributed.checkpoint's full state dict)."""
    from experiments.checkpoint import trainable_state

    if info.strategy != "fsdp":
        if not info.main:
            return None
        return trainable_state(unwrap(model)), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts)
    if not info.main:
        return None
    return {k: v for k, v in weights.items() if k in trainable}, optim


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, info: DistInfo) -> dict[str, Any]:
    """`checkpoint.restore` for a wrapped model: FSDP scatters the full tensors into shards."""
    from experiments import checkpoint

    if info.strategy != "fsdp":
        return checkpoint.restore(state, unwrap(model), optimizer, scheduler)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, state["model"], options=opts)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_state(state["rng"])
    return state["progress"]


@contextlib.contextmanager
def full_weights(model: nn.Module, info: DistInfo) -> Iterator[nn.Module]:
    """Inside, the model's parameters are full tensors on every rank (FSDP all-gathers them),
    so an export such as `methods.lora.export_peft(model, dir)` works on rank 0 unchanged."""
    if info.strategy != "fsdp":
        yield unwrap(model)
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in reversed(sharded):
            m.reshard()


def precheck(argv: list[str]) -> int:
    """`python -m experiments.distributed NPROC [device]`: exit 2 with one line if too many."""
    try:
        nproc = int(argv[0])
    except (IndexError, ValueError):
        print(f"error: NPROC={argv[0] if argv else ''!r} is not an integer", file=sys.stderr)
        return 2
    want = argv[1] if len(argv) > 1 else "auto"
    kind = "cuda" if want.startswith("cuda") or (want == "auto" and torch.cuda.is_available()) \
        else "cpu"
    try:
        check_nproc(nproc, kind)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(precheck(sys.argv[1:]))
