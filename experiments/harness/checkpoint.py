"""Checkpoints a run can continue from exactly (the data order is `experiments.harness.batching`).

A checkpoint holds only what changes during training: the trainable parameters (never the frozen
backbone, which is reloaded from its source), optimizer and scheduler state, every RNG state, the
position in the data order, and the metrics so far. It is written to a temp folder and renamed,
so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.contract import record as R
from experiments.contract.io import removed_on_error


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (the frozen rest is reloaded from its source)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(run_dir: Path, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
         scheduler: Any, progress: dict[str, Any],
         states: tuple[dict[str, Any], dict[str, Any]] | None = None) -> Path:
    """Write `run_dir/checkpoint/` atomically; returns its path. `states` = (trainable weights,
    optimizer state) already gathered (a sharded run), else read from model and optimizer."""
    weights, optim = states or (trainable_state(model), optimizer.state_dict())
    final = run_dir / "checkpoint"
    tmp = run_dir / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with removed_on_error(tmp):
        torch.save({"model": weights, "optimizer": optim,
                    "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "progress": progress}, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": progress["step"],
                                                       "epoch": progress["epoch"]}))
    old = run_dir / ".checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of a run folder, or None when it has none."""
    path = run_dir / "checkpoint" / "state.pt"
    if not path.exists():
        old = run_dir / ".checkpoint.old" / "state.pt"  # killed between the two renames
        path = old if old.exists() else path
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> dict[str, Any]:
    """Put a checkpoint back into model, optimizer, scheduler and the RNGs; returns progress."""
    params = dict(model.named_parameters())
    missing = set(state["model"]) - set(params)
    if missing:
        raise RuntimeError(f"checkpoint has parameters the model lacks: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["progress"]


def find_resumable(runs_dir: Path, resume: str, hash_: str, seed: int | None = None) -> Path:
    """The run folder `resume` names: a run id, or `auto` = the newest unfinished run with a
    checkpoint, this config hash and this seed (the hash leaves the seed out, so that seeds of
    one experiment share it). Raises UserError when there is none."""
    # Imported here: the config reaches the strategies, which import this module.
    from experiments.harness.config import UserError

    if resume != "auto":
        run_dir = runs_dir / resume
        if not (run_dir / "record.json").exists():
            raise UserError(f"resume={resume}: no run {resume!r} in {runs_dir}; pass a run_id "
                            "from that folder or resume=auto")
        if load_progress_step(run_dir) is None:
            raise UserError(f"resume={resume}: the run has no checkpoint to continue from")
        return run_dir
    for record_path in sorted(runs_dir.glob("*/record.json"), reverse=True):
        try:
            rec = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        same_seed = seed is None or (rec.get(R.CONFIG) or {}).get(R.C_SEED) == seed
        if (rec.get("config_hash") == hash_ and same_seed and rec.get("status") != "finished"
                and load_progress_step(record_path.parent) is not None):
            return record_path.parent
    raise UserError(f"resume=auto: no unfinished run with a checkpoint, this config and "
                    f"seed={seed} in {runs_dir}; drop resume= to start a new run")


def load_progress_step(run_dir: Path) -> int | None:
    """The step a run folder's checkpoint was taken at, or None without one."""
    for folder in ("checkpoint", ".checkpoint.old"):
        path = run_dir / folder / "progress.json"
        if path.exists() and (path.parent / "state.pt").exists():
            return int(json.loads(path.read_text())["step"])
    return None
