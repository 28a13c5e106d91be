"""The training loop: prepare the loaders and optimizer, fit, evaluate on test.

`Loop` holds what a checkpoint captures (`Progress`, the optimizer and scheduler) so a resumed run
continues exactly where it stopped. One optimizer step is `experiments.harness.step`'s; the memory
probe of the first steps is `experiments.memory.ledger.FirstStepProbe`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from experiments.contract import record as R
from experiments.dist import process as distributed
from experiments.dist.strategy import of
from experiments.harness import checkpoint, selection
from experiments.harness.batching import EpochOrder, PaddedRows, token_lengths
from experiments.harness.config import Config
from experiments.harness.evaluation import eval_loader, evaluate
from experiments.harness.interrupt import DeferredInterrupt
from experiments.harness.runtime import Context
from experiments.harness.selection import BestState
from experiments.harness.step import (
    NonFiniteLoss,
    apply_update,
    build_optimizer,
    forward_backward,
    warmup_linear,
)
from experiments.harness.tracking import EPOCH_KEY, bars_shown
from experiments.memory import canonical
from experiments.memory.ledger import (
    DevicePeak,
    FirstStepProbe,
    memory_record,
    memory_summary,
    per_rank,
)
from methods.base import MethodSpec


@dataclass
class Progress:
    """Where the loop is: the counters a checkpoint stores and a resumed run continues from."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    val_history: list[dict[str, Any]] = field(default_factory=list)
    loss_value: float = float("nan")

    def to_checkpoint(self, metrics_offset: int) -> dict[str, Any]:
        """The checkpoint's `progress` entry; `metrics_offset` is how far metrics.jsonl was."""
        return {**asdict(self), "metrics_offset": metrics_offset}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> tuple[Progress, int]:
        """(progress, metrics offset) from what `to_checkpoint` wrote."""
        return cls(**{f.name: saved[f.name] for f in fields(cls)}), int(saved["metrics_offset"])


@dataclass
class Loaders:
    """The data a run iterates: the train order and loader, the evaluation loaders, the length."""

    order: EpochOrder
    train: DataLoader
    validation: DataLoader
    test: DataLoader | None  # None: a validation-only run (test_split=false)
    steps_per_epoch: int
    total: int


class Pruned(Exception):  # noqa: N818 (a stop the observer asked for, not an error)
    """The validation observer stopped the run (the tuner's pruner)."""


Observer = Callable[[list[dict[str, Any]]], bool]  # the history so far -> stop the run?


# A split's metrics beyond accuracy, by the record key they go to.
VAL_EXTRA = {"macro_f1": R.VAL_MACRO_F1, "f1": R.VAL_F1, "mcc": R.VAL_MCC}
TEST_EXTRA = {"macro_f1": R.TEST_MACRO_F1, "f1": R.TEST_F1, "mcc": R.TEST_MCC}


class Loop:
    """The training loop's state, so a checkpoint can capture it and a resume restore it.

    `observe`, when given, sees the validation history after each validation; it returning
    True stops the run with `Pruned` (the tuner reports to its trial and asks the pruner)."""

    def __init__(self, cfg: Config, ctx: Context, model: torch.nn.Module, spec: MethodSpec,
                 num_labels: int, tracker: Any, record: dict[str, Any], run_dir: Path,
                 observe: Observer | None = None) -> None:
        self.cfg, self.ctx, self.model, self.spec = cfg, ctx, model, spec
        self.num_labels, self.tracker, self.record, self.run_dir = (num_labels, tracker, record,
                                                                     run_dir)
        self.progress = Progress()
        self.prepare_s = 0.0
        self.last_checkpoint: dict[str, Any] | None = None
        self.test_predictions: Any = None  # experiments.harness.evaluation.Predictions, after test
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.order: EpochOrder | None = None
        self.probe: Any = None
        self.canonical_length = 0  # tokens of the batch the memory step measures (_loaders)
        self.steps_per_epoch = 0  # known once the loaders exist
        self.best = BestState()
        self.metric = selection.metric(cfg)
        self.observe = observe
        self.interrupt = DeferredInterrupt()  # entered around `fit`: Ctrl-C at a step boundary

    def save_checkpoint(self) -> None:
        """Write the checkpoint (after the optimizer exists, and only at a step boundary)."""
        if self.optimizer is None or self.progress.step == 0 or self.interrupt.forced:
            return  # forced: an interrupt mid-step; the last checkpoint is the state to resume
        states = of(self.ctx.dist).full_states(self.model, self.optimizer, self.ctx.dist)
        if states is None:  # not rank 0: it took part in the gather, rank 0 writes
            return
        progress = {**self.progress.to_checkpoint(self.tracker.position()),
                    "best": self.best.to_checkpoint()}
        path = checkpoint.save(self.run_dir, None, None, self.scheduler, progress, states)
        self.last_checkpoint = {"step": self.progress.step, "path": str(path)}

    def validate(self, loader: DataLoader) -> None:
        """Evaluate on validation and log it."""
        t, p = time.perf_counter(), self.progress
        val = evaluate(of(self.ctx.dist).eval_model(self.model), loader, self.ctx,
                       self.num_labels)
        p.eval_s += time.perf_counter() - t
        p.val_history.append({"step": p.step, **val})
        epoch = p.step / self.steps_per_epoch if self.steps_per_epoch else float(p.epoch)
        self.tracker.log({**{f"val/{k}": v for k, v in val.items() if k != "n"},
                          EPOCH_KEY: epoch}, step=p.step)
        self.best.offer(self.model, p.step, val[self.metric])
        if self.observe is not None and self.observe(p.val_history):
            raise Pruned(f"stopped by the validation observer at step {p.step}")

    def prepare(self, splits: dict[str, Any], collate: Any) -> Loaders:
        """The method's data hook, the wrapped model, loaders, optimizer and schedule; a resumed
        run's checkpoint put back."""
        cfg, ctx, record = self.cfg, self.ctx, self.record
        t_prep = time.perf_counter()
        if self.spec.prepare_data is not None:
            splits, collate, hook_info = self.spec.prepare_data(self.model, splits, collate, cfg,
                                                                ctx)
            record[R.METHOD_INFO].update(hook_info)
        self.prepare_s = time.perf_counter() - t_prep
        self.model = of(ctx.dist).wrap(self.model)  # after the hook: it runs plain
        loaders = self._loaders(splits, collate)
        self.optimizer = build_optimizer(self.model, cfg, ctx.precision)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear(loaders.total, cfg.warmup_ratio))
        if cfg.resume:
            state = checkpoint.load(self.run_dir)
            saved = of(ctx.dist).restore(state, self.model, self.optimizer, self.scheduler)
            self.progress, offset = Progress.from_checkpoint(saved)
            self.best.load(saved.get("best"))
            self.tracker.truncate_to(offset)  # drop what was logged after the checkpoint
        return loaders

    def _loaders(self, splits: dict[str, Any], collate: Any) -> Loaders:
        """This rank's slice of every global batch, in the seeded (length-grouped) order."""
        cfg, dist = self.cfg, self.ctx.dist
        all_lengths = token_lengths(splits["train"])
        self.canonical_length = canonical.canonical_length(all_lengths, cfg.max_length)
        lengths = all_lengths if cfg.group_by_length else None
        order = EpochOrder(len(splits["train"]), cfg.batch_size, cfg.seed, dist.rank, dist.world,
                           lengths=lengths, group=cfg.group_by_length)
        self.order = order
        # Each DataLoader iterator draws a seed from its generator; a private one keeps those
        # draws off the global RNG, so dropout masks do not depend on when iterators start.
        loader_rng = torch.Generator().manual_seed(cfg.seed)
        train = DataLoader(PaddedRows(splits["train"]), batch_sampler=order, collate_fn=collate,
                           generator=loader_rng)
        val, test = (eval_loader(splits[k], cfg.eval_batch_size, collate, dist, loader_rng)
                     if k in splits else None for k in ("validation", "test"))
        steps_per_epoch = len(order.batches())
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        if cfg.max_steps and cfg.epochs:
            total = min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        return Loaders(order, train, val, test, steps_per_epoch, total)

    def fit(self, loaders: Loaders) -> None:
        """Train to the last step: validation each epoch (and every `eval_every`), checkpoints."""
        cfg, p, total = self.cfg, self.progress, loaders.total
        self.steps_per_epoch = loaders.steps_per_epoch  # validation logs its epoch for W&B
        trainable = [q for q in self.model.parameters() if q.requires_grad]
        # The ledger on the first step; after it, one extra step on the canonical batch shape
        # measured by category and undone (experiments.memory.canonical, memtrack).
        self.probe = FirstStepProbe(self.model, self.optimizer)
        bar = tqdm(total=total, initial=p.step, desc=cfg.method,
                   disable=not bars_shown(cfg.progress), dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        while p.step < total:
            loaders.order.set_position(p.epoch, p.batch_in_epoch)
            for batch in loaders.train:
                self._step(batch, trainable, loaders)
                if self.probe.meter is None:  # after the process's first step: state exists
                    self._measure_canonical(batch, trainable)
                bar.update(1)
                bar.set_postfix(loss=f"{p.loss_value:.4f}",
                                ex_s=f"{p.samples / max(p.train_s, 1e-9):.0f}")
                if cfg.eval_every and p.step % cfg.eval_every == 0:
                    self.validate(loaders.validation)
                if p.step >= total:
                    break
                if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                self.interrupt.at_boundary(self.ctx.dist, self.ctx.device)
            if p.batch_in_epoch >= loaders.steps_per_epoch:  # a whole epoch is done
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            if not p.val_history or p.val_history[-1]["step"] != p.step:
                self.validate(loaders.validation)
            self.save_checkpoint()
            self.interrupt.at_boundary(self.ctx.dist, self.ctx.device)
        bar.close()

    def _measure_canonical(self, batch: dict[str, torch.Tensor],
                           trainable: list[torch.Tensor]) -> None:
        """The memory measurement: one extra step on rows x `canonical_length` tokens built from
        this batch, undone after, so every method and seed is measured on the same shape."""
        cfg, ctx = self.cfg, self.ctx
        rows = max(1, cfg.batch_size // ctx.dist.world)
        shaped = ctx.to_device(canonical.canonical_batch(batch, rows, self.canonical_length))

        def step(b: dict[str, torch.Tensor]) -> None:
            forward_backward(self.model, b, ctx)
            apply_update(self.optimizer, trainable, cfg.max_grad_norm)

        meter = canonical.measure(self.model, self.optimizer, shaped, step)
        meter.result.update({R.MEASURED_BATCH_SHAPES: meter.result.get(R.MEASURED_BATCH, {}),
                             R.MEASURED_BATCH: canonical.batch_shape(shaped),
                             R.MEASURED_BATCH_RULE: canonical.RULE,
                             R.MEASURED_STEP: self.progress.step})
        self.probe.meter = meter

    def _step(self, batch: dict[str, torch.Tensor], trainable: list[torch.Tensor],
              loaders: Loaders) -> None:
        """One optimizer step; a non-finite loss stops the run before the update."""
        cfg, p, t = self.cfg, self.progress, time.perf_counter()
        batch = self.ctx.to_device(batch)
        # The loss is averaged over the global batch's rows (all ranks), as in one process.
        rows = loaders.order.global_size(p.batch_in_epoch)
        with self.probe.step(batch):  # forward to optimizer step; measured once per run
            loss = forward_backward(self.model, batch, self.ctx, rows / self.ctx.dist.world)
            # The global mean (all ranks); also syncs, so the step time is real.
            p.loss_value = distributed.global_mean(loss, self.ctx.dist)
            if not math.isfinite(p.loss_value):
                raise NonFiniteLoss(f"loss is {p.loss_value} at step {p.step + 1}; the "
                                    f"weights were not updated (last checkpoint: "
                                    f"{(self.last_checkpoint or {}).get('step', 'none')})")
            apply_update(self.optimizer, trainable, cfg.max_grad_norm)
        self.scheduler.step()
        p.train_s += time.perf_counter() - t
        p.step += 1
        p.batch_in_epoch += 1
        p.samples += rows
        if p.step % cfg.log_every == 0 or p.step == loaders.total:
            self.tracker.log({"train/loss": p.loss_value,
                              "train/lr": self.scheduler.get_last_lr()[0],
                              "train/epoch": p.step / loaders.steps_per_epoch}, step=p.step)

    def evaluate(self, loaders: Loaders, peak: DevicePeak) -> dict[str, Any]:
        """The selected state put back; test evaluation (unless validation only), metrics,
        memory and time into the record; returns the W&B summary."""
        record, p, last = self.record, self.progress, self.progress.val_history[-1]
        self.best.restore(self.model)
        metrics = {R.VAL_ACCURACY: last["accuracy"],
                   R.VAL_BEST_ACCURACY: max(v["accuracy"] for v in p.val_history),
                   R.VAL_SELECTED_SCORE: self.best.score,
                   R.TRAIN_LOSS_FINAL: p.loss_value}
        metrics.update({key: last[k] for k, key in VAL_EXTRA.items() if k in last})
        if loaders.test is not None:
            t = time.perf_counter()
            test = evaluate(of(self.ctx.dist).eval_model(self.model), loaders.test,
                            self.ctx, self.num_labels)
            self.test_predictions = test.predictions
            p.eval_s += time.perf_counter() - t
            metrics.update({R.TEST_ACCURACY: test["accuracy"], R.TEST_N: test["n"]})
            metrics.update({key: test[k] for k, key in TEST_EXTRA.items() if k in test})
        record.update({R.METRICS: metrics, R.VAL_HISTORY: p.val_history, R.STEPS: p.step,
                       R.EPOCHS: round(p.step / loaders.steps_per_epoch, 3),
                       R.SELECTED_STEP: self.best.step, R.SELECTION: selection.rule(self.metric),
                       R.SELECTION_METRIC: self.metric,
                       R.TEST_EVALUATED: loaders.test is not None})
        record[R.MEMORY] = per_rank(memory_record(
            peak, self.probe, record[R.PARAMS], self.ctx.precision,
            of(self.ctx.dist).shards(self.ctx.dist.world)), self.ctx.dist)
        record[R.TIME].update({R.TRAIN_S: round(p.train_s, 3), R.EVAL_S: round(p.eval_s, 3),
                               R.PREPARE_S: round(self.prepare_s, 3),
                               R.SAMPLES_PER_S: round(p.samples / p.train_s, 2)})
        # Every metric (best validation accuracy, F1, MCC) and the throughput, for W&B's table.
        return {**metrics, **memory_summary(record[R.MEMORY]),
                f"{R.TIME}/{R.TRAIN_S}": record[R.TIME][R.TRAIN_S],
                f"{R.TIME}/{R.SAMPLES_PER_S}": record[R.TIME][R.SAMPLES_PER_S]}
