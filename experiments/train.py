"""The one training harness: every method runs through this loop.

Run it:
    python -m experiments.train method=lora lora.rank=16 train_size=2000
    make experiment METHOD=lora ARGS="lora.rank=16 train_size=2000"
    python -m experiments.train --help        # every config key with its default

It loads the backbone and data, lets the method mark what trains (`apply`), trains with AdamW
over the trainable parameters only (warm-up then linear decay, gradient clipping), evaluates on
validation each epoch (and every `eval_every` steps) and on test at the end, and writes a W&B run
plus `runs/<run_id>/record.json`. It never asks which method it runs: a method that needs
something from the loop exposes a hook (`prepare_data`).
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from experiments.config import Config, UserError, config_hash, describe, resolve, to_dict
from experiments.memory import FirstStepProbe, memory_record, memory_summary

EXIT_USER_ERROR = 2


@dataclass
class Context:
    """Where and how tensors run: device and precision."""

    device: torch.device
    precision: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the mixed-precision modes, a no-op for fp32."""
        enabled = self.precision in ("bf16-mixed", "mixed-12n")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move a batch to the device."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def pick_device(name: str) -> torch.device:
    """auto -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device={name!r} is not a device; use auto, cpu or cuda[:N]") from exc


def pick_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16-mixed on CUDA, fp32 on CPU."""
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def tokenize(splits: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Token ids per split, unpadded (the collator pads each batch to its longest row)."""
    import datasets

    datasets.disable_progress_bars()
    out = {}
    for name, ds in splits.items():
        ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
                    batched=True, remove_columns=["text"])
        out[name] = ds.rename_column("label", "labels").with_format("torch")
    return out


def build_optimizer(model: torch.nn.Module, cfg: Config,
                    precision: str | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; no weight decay on biases and norms.

    `precision` (default `cfg.precision`) picks the state layout: mixed-12n keeps bf16
    gradients and momentum (`experiments.optim.Mixed12nAdamW`), the others torch's AdamW."""
    from experiments.optim import make_adamw

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"method {cfg.method!r} left no parameter trainable")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return make_adamw([g for g in groups if g["params"]], cfg.lr, precision or cfg.precision)


def warmup_linear(total_steps: int, warmup_ratio: float) -> Any:
    """LR multiplier: linear warm-up to 1, then linear decay to 0 at `total_steps`."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, ctx: Context,
             num_labels: int) -> dict[str, float]:
    """Accuracy (and macro-F1 with more than two classes) over a whole split."""
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for batch in loader:
        batch = ctx.to_device(batch)
        y = batch.pop("labels")
        with ctx.autocast():
            logits = model(**batch).logits
        preds.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return classification_metrics(torch.cat(preds).numpy(), torch.cat(labels).numpy(), num_labels)


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, n, and macro-F1 over classes when there are more than two."""
    out = {"accuracy": float((pred == true).mean()), "n": int(len(true))}
    if num_labels > 2:
        f1s = []
        for c in range(num_labels):
            tp = np.sum((pred == c) & (true == c))
            denom = np.sum(pred == c) + np.sum(true == c)
            f1s.append(2 * tp / denom if denom else 0.0)
        out["macro_f1"] = float(np.mean(f1s))
    return out


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run(cfg: Config) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the record (also written to disk)."""
    from experiments.backbones import load_backbone, param_split
    from experiments.data import load_data
    from experiments.memory import DevicePeak
    from experiments.tracking import Tracker, environment, new_run_id, wandb_mode
    from methods import METHODS

    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    ctx = Context(device, pick_precision(cfg.precision, device))
    seed_everything(cfg.seed)
    # Everything that can reject the user's input happens before anything is written.
    bundle = load_data(cfg)
    model, tokenizer, model_info = load_backbone(cfg.model, bundle.num_labels, cfg.pooling,
                                                 cfg.classifier_dropout)
    method = METHODS[cfg.method]
    method_info = dict(method.apply(model, cfg.method_cfg) or {})
    model.to(device)
    splits = tokenize(bundle.splits, tokenizer, cfg.max_length)
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    params = param_split(model)

    run_id = new_run_id(cfg.method)
    run_dir = Path(cfg.resolved_runs_dir()) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    config = to_dict(cfg)
    record: dict[str, Any] = {
        "schema": 1, "run_id": run_id, "method": cfg.method,
        "experiment": cfg.experiment_name(), "config_hash": config_hash(cfg),
        "status": "running", "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config, "method_info": method_info, "model": model_info, "data": bundle.info,
        "precision": ctx.precision, "params": params, "metrics": {}, "memory": {}, "time": {},
        "env": environment(device),
    }
    tracker = Tracker(run_dir, run_id, {**config, "config_hash": record["config_hash"]},
                      cfg.experiment_name(), wandb_mode(cfg.wandb), cfg.wandb_project)
    summary: dict[str, Any] = {}
    try:
        summary = _train(cfg, ctx, model, method, splits, collate, bundle.num_labels, tracker,
                         record, DevicePeak)
        record["status"] = "finished"
    except KeyboardInterrupt:
        record["status"] = "cancelled"
        raise
    except Exception as exc:
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record["time"]["total_s"] = round(time.perf_counter() - t0, 3)
        summary.update({"params/trainable": params["trainable"], "params/total": params["total"]})
        record["record_path"] = str(run_dir / "record.json")
        tracker.finish(record, summary)
    return record


def _train(cfg: Config, ctx: Context, model: torch.nn.Module, method: Any,
           splits: dict[str, Any], collate: Any, num_labels: int, tracker: Any,
           record: dict[str, Any], peak_cls: Any) -> dict[str, Any]:
    """The loop itself; fills `record` in place and returns the W&B summary."""
    t_prep = time.perf_counter()
    hook = getattr(method, "prepare_data", None)
    if hook is not None:
        splits, hook_collate, hook_info = hook(model, splits, collate, cfg, ctx)
        collate = hook_collate
        record["method_info"].update(hook_info)
    prepare_s = time.perf_counter() - t_prep

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(splits["train"], batch_size=cfg.batch_size, shuffle=True,
                              generator=gen, collate_fn=collate)
    eval_loaders = {k: DataLoader(splits[k], batch_size=cfg.eval_batch_size, collate_fn=collate)
                    for k in ("validation", "test")}
    steps_per_epoch = len(train_loader)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.max_steps and cfg.epochs:
        total = min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    optimizer = build_optimizer(model, cfg, ctx.precision)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total, cfg.warmup_ratio))
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Ledger and saved-activation peak, measured on the first step only (see experiments.memory).
    probe = FirstStepProbe(model, optimizer)

    step, samples, train_s, eval_s = 0, 0, 0.0, 0.0
    val_history: list[dict[str, Any]] = []
    best_val = 0.0
    loss_value = float("nan")

    def validate() -> None:
        nonlocal eval_s, best_val
        t = time.perf_counter()
        val = evaluate(model, eval_loaders["validation"], ctx, num_labels)
        eval_s += time.perf_counter() - t
        best_val = max(best_val, val["accuracy"])
        val_history.append({"step": step, **val})
        tracker.log({f"val/{k}": v for k, v in val.items() if k != "n"}, step=step)

    bar = tqdm(total=total, desc=f"{cfg.method}", disable=not cfg.progress, dynamic_ncols=True,
               file=sys.stderr)
    model.train()
    with peak_cls(ctx.device) as peak:
        epoch = 0
        while step < total:
            epoch += 1
            for batch in train_loader:
                t = time.perf_counter()
                batch = ctx.to_device(batch)
                with probe.activations(batch):  # a no-op after the first step
                    with ctx.autocast():
                        loss = model(**batch).loss
                    loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = loss.item()  # also syncs, so the step time below is real
                train_s += time.perf_counter() - t
                step += 1
                samples += len(batch["labels"])
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", ex_s=f"{samples / train_s:.0f}")
                if step % cfg.log_every == 0 or step == total:
                    tracker.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                                 "train/epoch": step / steps_per_epoch}, step=step)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    validate()
                if step >= total:
                    break
            if not val_history or val_history[-1]["step"] != step:
                validate()
    bar.close()
    t = time.perf_counter()
    test = evaluate(model, eval_loaders["test"], ctx, num_labels)
    eval_s += time.perf_counter() - t

    metrics = {"test/accuracy": test["accuracy"], "val/accuracy": val_history[-1]["accuracy"],
               "val/best_accuracy": best_val, "train/loss_final": loss_value, "test/n": test["n"]}
    if "macro_f1" in test:
        metrics["test/macro_f1"] = test["macro_f1"]
        metrics["val/macro_f1"] = val_history[-1]["macro_f1"]
    record["metrics"] = metrics
    record["val_history"] = val_history
    record["steps"] = step
    record["epochs"] = round(step / steps_per_epoch, 3)
    record["memory"] = memory_record(peak, probe, record["params"], ctx.precision)
    record["time"].update({"train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
                           "prepare_s": round(prepare_s, 3),
                           "train_samples_per_s": round(samples / train_s, 2)})
    return {"test/accuracy": test["accuracy"], "val/accuracy": metrics["val/accuracy"],
            **({"test/macro_f1": test["macro_f1"]} if "macro_f1" in test else {}),
            **memory_summary(record["memory"]),
            "time/train_s": record["time"]["train_s"]}


def summary_line(record: dict[str, Any]) -> str:
    """The one line a user reads at the end of a run."""
    p, m = record["params"], record["metrics"]
    pct = 100 * p["trainable"] / max(1, p["total"])
    return (f"{record['method']}: test/accuracy={m['test/accuracy']:.4f} "
            f"trainable={p['trainable']:,}/{p['total']:,} ({pct:.2f}%) "
            f"peak_mem={human_bytes(record['memory']['peak_bytes'])} "
            f"wall={record['time']['total_s']:.1f}s record={record['record_path']}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: key=value arguments; user errors are one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        print("config keys (key=value):\n" + describe())
        return 0
    try:
        record = run(resolve(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cancelled: the record says so", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: the run failed ({type(exc).__name__}: {exc}); the record and "
              "error.txt in its run folder hold the details", file=sys.stderr)
        return 1
    print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
