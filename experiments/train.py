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

import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from experiments.contract import record as R
from experiments.contract.units import human_bytes
from experiments.dist import parallel
from experiments.dist import process as distributed
from experiments.harness import checkpoint
from experiments.harness.batching import IGNORE_INDEX, EpochOrder, PaddedRows, token_lengths
from experiments.harness.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR
from experiments.harness.config import (
    Config,
    UserError,
    config_hash,
    describe,
    flatten,
    method_errors,
    resolve,
    to_dict,
)
from experiments.harness.evaluation import eval_loader, evaluate
from experiments.harness.runtime import (
    Context,
    pick_device,
    pick_precision,
    seed_everything,
    tokenize,
)
from experiments.memory.ledger import FirstStepProbe, memory_record, memory_summary, per_rank
from methods import METHODS
from methods.model import param_split


def build_optimizer(model: torch.nn.Module, cfg: Config,
                    precision: str | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; no weight decay on biases and norms.

    `precision` (default `cfg.precision`) picks the state layout: mixed-12n keeps bf16
    gradients and momentum (`experiments.harness.optim.Mixed12nAdamW`), the others torch's AdamW."""
    from experiments.harness.optim import make_adamw

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"method {cfg.method!r} left no parameter trainable")
    # A method's optional `lr_scales` hook: parameters that learn at a multiple of lr (LoRA+).
    hook = getattr(METHODS.get(cfg.method), "lr_scales", None) if cfg.method_cfg else None
    scales = {id(p): s for p, s in (hook(model, cfg.method_cfg) if hook else {}).items()}
    groups = []
    for s in dict.fromkeys([1.0, *scales.values()]):
        mine = [p for p in params if scales.get(id(p), 1.0) == s]
        groups += [{"params": [p for p in mine if p.ndim >= 2], "weight_decay": cfg.weight_decay,
                    "lr": cfg.lr * s},
                   {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0,
                    "lr": cfg.lr * s}]
    return make_adamw([g for g in groups if g["params"]], cfg.lr, precision or cfg.precision,
                      cfg.optimizer_impl)


def warmup_linear(total_steps: int, warmup_ratio: float) -> Any:
    """LR multiplier: linear warm-up to 1, then linear decay to 0 at `total_steps`."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: Context,
                     rows: float | None = None) -> torch.Tensor:
    """The loss of one batch (on the device, under the run's autocast), backpropagated.

    The cross-entropy is summed over the batch's labelled rows and divided by `rows` (default:
    those rows, the mean). Under several processes `rows` is the global batch's rows over the
    world size: DDP then averages the ranks' gradients into the single-process mean, also for a
    short last batch whose rows are unevenly spread (a padding row's label is ignored)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    with ctx.autocast():
        logits = model(**inputs).logits
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=IGNORE_INDEX)
    loss = loss / (rows if rows is not None else (labels != IGNORE_INDEX).sum().clamp(min=1))
    loss.backward()
    return loss


def apply_update(optimizer: torch.optim.Optimizer, trainable: list[torch.Tensor],
                 max_grad_norm: float) -> None:
    """Clip the gradients, take the optimizer step, and free the gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _now() -> str:
    """UTC time as the record writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops before the optimizer applies it."""


def run(cfg: Config) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the record (also written to disk)."""
    from experiments.contract.io import atomic_write_json
    from experiments.harness.artifacts import save_run
    from experiments.harness.provenance import environment, new_run_id
    from experiments.harness.tracking import NullTracker, Tracker, wandb_mode
    from experiments.inputs.backbones import load_backbone
    from experiments.inputs.data import load_data
    t0 = time.perf_counter()
    cfg.dist = distributed.strategy(cfg.dist)  # before hashing: under torchrun none means ddp
    runs_dir = R.runs_dir(cfg.runs_dir)
    previous: dict[str, Any] | None = None
    if cfg.resume:
        run_dir = checkpoint.find_resumable(runs_dir, cfg.resume, config_hash(cfg), cfg.seed)
        previous = json.loads((run_dir / R.RECORD_FILE).read_text())
        # The saved config is the run's; only how it reports may change on resume.
        keep = {k: getattr(cfg, k) for k in ("progress", "wandb", "runs_dir")}
        cfg = resolve({**flatten(previous[R.CONFIG]), **keep, "resume": run_dir.name})
    device = pick_device(cfg.device)
    info = distributed.setup(cfg.dist, device, cfg.batch_size)
    device = distributed.local_device(device, info)
    ctx = Context(device, pick_precision(cfg.precision, device), info)
    seed_everything(cfg.seed)
    # Everything that can reject the user's input happens before anything is written.
    bundle = load_data(cfg)
    model, tokenizer, model_info = load_backbone(cfg.model, bundle.num_labels, cfg.pooling,
                                                 cfg.classifier_dropout)
    method = METHODS[cfg.method]
    with method_errors():
        method_info = dict(method.apply(model, cfg.method_cfg) or {})
    model.to(device)
    splits = tokenize(bundle.splits, tokenizer, cfg.max_length)
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    params = param_split(model)

    if previous is not None:
        run_id, record = previous[R.RUN_ID], previous
        record.setdefault(R.RESUMED, []).append({"at": _now()})
        record.update({R.STATUS: R.RUNNING, R.ERROR: None})
    else:
        run_id = distributed.broadcast(new_run_id(cfg.method), info)  # rank 0's id for all
        run_dir = runs_dir / run_id
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=False)  # a clash of ids fails here, never merges
        record = {"schema": R.SCHEMA, R.RUN_ID: run_id, R.METHOD: cfg.method,
                  R.EXPERIMENT: cfg.experiment_name(), R.CONFIG_HASH: config_hash(cfg),
                  R.STATUS: R.RUNNING, R.STARTED_AT: _now(), R.CONFIG: to_dict(cfg),
                  R.METHOD_INFO: method_info, R.MODEL: model_info, R.DATA: bundle.info,
                  R.PRECISION: ctx.precision, R.PARAMS: params, R.METRICS: {}, R.MEMORY: {},
                  R.TIME: {}, R.ENV: environment(device)}
    record[R.RECORD_PATH] = str(run_dir / R.RECORD_FILE)
    record[R.DIST] = info.record()
    tracker: Any = NullTracker()  # only rank 0 writes the folder, the record and W&B
    if info.main:
        # A run killed outright (SIGKILL, power) still leaves a record saying it never finished.
        atomic_write_json(run_dir / R.RECORD_FILE, record)
        tracker = Tracker(run_dir, run_id, {**record[R.CONFIG],
                                            R.CONFIG_HASH: record[R.CONFIG_HASH]},
                          cfg.experiment_name(), wandb_mode(cfg.wandb), cfg.wandb_project,
                          resume=previous is not None)
    loop = Loop(cfg, ctx, model, method, bundle.num_labels, tracker, record, run_dir)
    summary: dict[str, Any] = {}
    try:
        summary = loop.run(splits, collate)
        # What the run leaves behind: test predictions and (save=auto) the trained model.
        record[R.ARTIFACTS] = save_run(loop.model, run_dir, cfg, bundle.label_names, model_info,
                                       loop.test_predictions, info, ctx.precision)
        record[R.STATUS] = R.FINISHED
    except KeyboardInterrupt:
        record[R.STATUS] = R.CANCELLED
        loop.save_checkpoint()
        raise
    except Exception as exc:
        record[R.STATUS] = R.FAILED
        record[R.ERROR] = f"{type(exc).__name__}: {exc}"
        record[R.FAILED_AT_STEP] = loop.step
        if info.main:
            (run_dir / R.ERROR_FILE).write_text(traceback.format_exc())
        raise
    finally:
        record[R.LAST_CHECKPOINT] = loop.last_checkpoint
        record[R.FINISHED_AT] = _now()
        record[R.TIME][R.TOTAL_S] = round(time.perf_counter() - t0, 3)
        summary.update({f"{R.PARAMS}/{k}": params[k] for k in (R.P_TRAINABLE, R.P_TOTAL)})
        tracker.finish(record, summary)
    if record[R.STATUS] == R.FINISHED and not cfg.keep_checkpoint and info.main:
        import shutil

        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return record


class Loop:
    """The training loop's state, so a checkpoint can capture it and a resume restore it."""

    def __init__(self, cfg: Config, ctx: Context, model: torch.nn.Module, method: Any,
                 num_labels: int, tracker: Any, record: dict[str, Any], run_dir: Path) -> None:
        self.cfg, self.ctx, self.model, self.method = cfg, ctx, model, method
        self.num_labels, self.tracker, self.record, self.run_dir = (num_labels, tracker, record,
                                                                     run_dir)
        self.step = self.epoch = self.batch_in_epoch = self.samples = 0
        self.train_s = self.eval_s = self.prepare_s = 0.0
        self.val_history: list[dict[str, Any]] = []
        self.loss_value = float("nan")
        self.last_checkpoint: dict[str, Any] | None = None
        self.test_predictions: Any = None  # experiments.harness.evaluation.Predictions, after test
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.order: EpochOrder | None = None

    def progress(self) -> dict[str, Any]:
        """Where the loop is, and the counters a resumed run continues from."""
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "samples": self.samples, "train_s": self.train_s, "eval_s": self.eval_s,
                "val_history": self.val_history, "loss_value": self.loss_value,
                "metrics_offset": self.tracker.position()}

    def save_checkpoint(self) -> None:
        """Write the checkpoint (after the optimizer exists, and only at a step boundary)."""
        if self.optimizer is None or self.step == 0:
            return
        states = checkpoint.full_states(self.model, self.optimizer, self.ctx.dist)
        if states is None:  # not rank 0: it took part in the gather, rank 0 writes
            return
        path = checkpoint.save(self.run_dir, None, None, self.scheduler, self.progress(), states)
        self.last_checkpoint = {"step": self.step, "path": str(path)}

    def validate(self, loader: DataLoader) -> None:
        """Evaluate on validation and log it."""
        t = time.perf_counter()
        val = evaluate(parallel.eval_model(self.model, self.ctx.dist), loader, self.ctx,
                       self.num_labels)
        self.eval_s += time.perf_counter() - t
        self.val_history.append({"step": self.step, **val})
        self.tracker.log({f"val/{k}": v for k, v in val.items() if k != "n"}, step=self.step)

    def run(self, splits: dict[str, Any], collate: Any) -> dict[str, Any]:
        """Prepare, train, evaluate; fills the record and returns the W&B summary."""
        from experiments.memory.ledger import DevicePeak

        # The device peak covers preparation too (the head's feature pass is part of its cost).
        with DevicePeak(self.ctx.device) as peak:
            return self._run(splits, collate, peak)

    def _run(self, splits: dict[str, Any], collate: Any, peak: Any) -> dict[str, Any]:
        """`run` inside the device-peak measurement."""
        cfg, ctx, model, record = self.cfg, self.ctx, self.model, self.record
        t_prep = time.perf_counter()
        hook = getattr(self.method, "prepare_data", None)
        if hook is not None:
            splits, collate, hook_info = hook(model, splits, collate, cfg, ctx)
            record[R.METHOD_INFO].update(hook_info)
        self.prepare_s = time.perf_counter() - t_prep
        model = self.model = parallel.wrap(model, ctx.dist)  # after the hook: it runs plain

        world = ctx.dist.world  # each rank takes its slice of every global batch
        lengths = token_lengths(splits["train"]) if cfg.group_by_length else None
        order = EpochOrder(len(splits["train"]), cfg.batch_size, cfg.seed, ctx.dist.rank, world,
                           lengths=lengths, group=cfg.group_by_length)
        self.order = order
        # Each DataLoader iterator draws a seed from its generator; a private one keeps those
        # draws off the global RNG, so dropout masks do not depend on when iterators start.
        loader_rng = torch.Generator().manual_seed(cfg.seed)
        train_loader = DataLoader(PaddedRows(splits["train"]), batch_sampler=order,
                                  collate_fn=collate, generator=loader_rng)
        eval_loaders = {k: eval_loader(splits[k], cfg.eval_batch_size, collate, ctx.dist,
                                       loader_rng)
                        for k in ("validation", "test")}
        steps_per_epoch = len(order.batches())
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        if cfg.max_steps and cfg.epochs:
            total = min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        self.optimizer = build_optimizer(model, cfg, ctx.precision)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear(total, cfg.warmup_ratio))
        trainable = [p for p in model.parameters() if p.requires_grad]
        if cfg.resume:
            state = checkpoint.load(self.run_dir)
            saved = checkpoint.restore_wrapped(state, model, self.optimizer, self.scheduler,
                                               ctx.dist)
            self.tracker.truncate_to(saved.pop("metrics_offset"))  # logged after the checkpoint
            for key, value in saved.items():
                setattr(self, key, value)
        # The ledger on the first step; one whole step measured by category (the second, so
        # the optimizer state exists when it begins; experiments.memory.memtrack).
        probe = FirstStepProbe(model, self.optimizer, steps_left=total - self.step)

        bar = tqdm(total=total, initial=self.step, desc=cfg.method, disable=not cfg.progress,
                   dynamic_ncols=True, file=sys.stderr)
        model.train()
        while self.step < total:
            order.set_position(self.epoch, self.batch_in_epoch)
            for batch in train_loader:
                self._step(batch, probe, trainable, total, steps_per_epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{self.loss_value:.4f}",
                                ex_s=f"{self.samples / max(self.train_s, 1e-9):.0f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.validate(eval_loaders["validation"])
                if self.step >= total:
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.batch_in_epoch >= steps_per_epoch:  # a whole epoch is done
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if not self.val_history or self.val_history[-1]["step"] != self.step:
                self.validate(eval_loaders["validation"])
            self.save_checkpoint()
        bar.close()
        return self._finish(eval_loaders["test"], peak, probe, steps_per_epoch)

    def _step(self, batch: dict[str, torch.Tensor], probe: Any, trainable: list[torch.Tensor],
              total: int, steps_per_epoch: int) -> None:
        """One optimizer step; a non-finite loss stops the run before the update."""
        cfg, t = self.cfg, time.perf_counter()
        batch = self.ctx.to_device(batch)
        # The loss is averaged over the global batch's rows (all ranks), as in one process.
        rows = self.order.global_size(self.batch_in_epoch)
        with probe.step(batch):  # forward to optimizer step; measured once per run
            loss = forward_backward(self.model, batch, self.ctx, rows / self.ctx.dist.world)
            # The global mean (all ranks); also syncs, so the step time is real.
            self.loss_value = distributed.global_mean(loss, self.ctx.dist)
            if not math.isfinite(self.loss_value):
                raise NonFiniteLoss(f"loss is {self.loss_value} at step {self.step + 1}; the "
                                    f"weights were not updated (last checkpoint: "
                                    f"{(self.last_checkpoint or {}).get('step', 'none')})")
            apply_update(self.optimizer, trainable, cfg.max_grad_norm)
        self.scheduler.step()
        self.train_s += time.perf_counter() - t
        self.step += 1
        self.batch_in_epoch += 1
        self.samples += rows
        if self.step % cfg.log_every == 0 or self.step == total:
            self.tracker.log({"train/loss": self.loss_value,
                              "train/lr": self.scheduler.get_last_lr()[0],
                              "train/epoch": self.step / steps_per_epoch}, step=self.step)

    def _finish(self, test_loader: DataLoader, peak: Any, probe: Any,
                steps_per_epoch: int) -> dict[str, Any]:
        """Test evaluation, metrics, memory and time into the record; the W&B summary."""
        record, last = self.record, self.val_history[-1]
        t = time.perf_counter()
        test = evaluate(parallel.eval_model(self.model, self.ctx.dist), test_loader, self.ctx,
                        self.num_labels)
        self.test_predictions = test.predictions
        self.eval_s += time.perf_counter() - t
        metrics = {R.TEST_ACCURACY: test["accuracy"], R.VAL_ACCURACY: last["accuracy"],
                   R.VAL_BEST_ACCURACY: max(v["accuracy"] for v in self.val_history),
                   R.TRAIN_LOSS_FINAL: self.loss_value, R.TEST_N: test["n"]}
        if "macro_f1" in test:
            metrics[R.TEST_MACRO_F1] = test["macro_f1"]
            metrics[R.VAL_MACRO_F1] = last["macro_f1"]
        record.update({R.METRICS: metrics, R.VAL_HISTORY: self.val_history, R.STEPS: self.step,
                       R.EPOCHS: round(self.step / steps_per_epoch, 3)})
        record[R.MEMORY] = per_rank(memory_record(
            peak, probe, record[R.PARAMS], self.ctx.precision, distributed.shards(self.ctx.dist)),
            self.ctx.dist)
        record[R.TIME].update({R.TRAIN_S: round(self.train_s, 3), R.EVAL_S: round(self.eval_s, 3),
                               R.PREPARE_S: round(self.prepare_s, 3),
                               R.SAMPLES_PER_S: round(self.samples / self.train_s, 2)})
        summary = {k: metrics[k] for k in (R.TEST_ACCURACY, R.VAL_ACCURACY, R.TEST_MACRO_F1)
                   if k in metrics}
        return {**summary, **memory_summary(record[R.MEMORY]),
                f"{R.TIME}/{R.TRAIN_S}": record[R.TIME][R.TRAIN_S]}


def summary_line(record: dict[str, Any]) -> str:
    """The one line a user reads at the end of a run."""
    p, m, mem = record[R.PARAMS], record[R.METRICS], record[R.MEMORY]
    pct = 100 * p[R.P_TRAINABLE] / max(1, p[R.P_TOTAL])
    # A resumed run with no step left to measure has no measured peak.
    peak = mem.get(R.MEASURED_PEAK_BYTES)
    return (f"{record[R.METHOD]}: test/accuracy={m[R.TEST_ACCURACY]:.4f} "
            f"trainable={p[R.P_TRAINABLE]:,}/{p[R.P_TOTAL]:,} ({pct:.2f}%) "
            f"step_peak_mem={'—' if peak is None else human_bytes(peak)} "
            f"wall={record[R.TIME][R.TOTAL_S]:.1f}s record={record[R.RECORD_PATH]}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: key=value arguments; user errors are one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        print("config keys (key=value):\n" + describe())
        return EXIT_OK
    try:
        record = run(resolve(argv))
        distributed.cleanup(sync=True)
    except UserError as exc:
        if distributed.env_rank() == 0:  # one line, not one per process
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cancelled: the record says so", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:
        print(f"error: the run failed ({type(exc).__name__}: {exc}); the record and "
              "error.txt in its run folder hold the details", file=sys.stderr)
        return EXIT_FAILED
    finally:
        distributed.cleanup()
    if distributed.env_rank() == 0:
        print(summary_line(record))
    return EXIT_OK


if __name__ == "__main__":
    distributed.exit_process(main())
