"""The one training harness: every method runs through this loop.

Run it:
    python -m experiments.train method=lora lora.rank=16 train_size=2000
    make experiment METHOD=lora ARGS="lora.rank=16 train_size=2000"
    python -m experiments.train --help        # every config key with its default

It loads the backbone and data, lets the method mark what trains (`apply`), trains with AdamW
over the trainable parameters only (warm-up then linear decay, gradient clipping), evaluates on
validation each epoch (and every `eval_every` steps), tests the state of the best validation
(`experiments.harness.selection`), and writes a W&B run plus `runs/<run_id>/record.json`. It
never asks which method it runs: a method that needs something from the loop exposes a hook
(`prepare_data`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorWithPadding

from experiments.contract import record as R
from experiments.contract.io import atomic_write_json
from experiments.contract.units import human_bytes
from experiments.dist import process as distributed
from experiments.dist.process import DistInfo
from experiments.dist.strategy import exit_process, resolve_name
from experiments.harness import checkpoint, lock
from experiments.harness.artifacts import save_run
from experiments.harness.build import Built, build_model
from experiments.harness.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR
from experiments.harness.config import (
    Config,
    UserError,
    applied_preset,
    config_hash,
    describe,
    describe_methods,
    resolve,
    resumed_config,
    to_dict,
)
from experiments.harness.loop import Loop, Observer, Pruned
from experiments.harness.preflight import preflight
from experiments.harness.provenance import environment, new_run_id
from experiments.harness.runtime import (
    Context,
    pick_device,
    pick_precision,
    seed_everything,
    tokenize,
)
from experiments.harness.step import (
    NonFiniteLoss,
    apply_update,
    build_optimizer,
    forward_backward,
    warmup_linear,
)
from experiments.harness.tracking import (
    NullTracker,
    Tracker,
    identity,
    quiet_progress,
    wandb_mode,
)
from experiments.inputs.data import DataBundle, load_data
from experiments.memory.ledger import DevicePeak
from methods.model import param_split

# The step's parts stay importable from the entry point, where scripts have long found them.
__all__ = ["Context", "NonFiniteLoss", "apply_update", "build_optimizer", "forward_backward",
           "main", "run", "summary_line", "warmup_linear"]
# How long a rank other than 0 waits before leaving on bad input (rank 0's exit ends it sooner).
USER_ERROR_GRACE_S = 10.0


def _now() -> str:
    """UTC time as the record writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Setup:
    """A run ready to train: its config, device, model, data, record, folder and tracker."""

    cfg: Config
    ctx: Context
    built: Built
    bundle: DataBundle
    splits: dict[str, Any]
    collate: Any
    record: R.Record
    run_dir: Path
    tracker: Tracker | NullTracker


@lock.releasing  # the run folder's writer lock, held for the run's life
def run(cfg: Config, observe: Observer | None = None,
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the record (also written to disk).

    `observe` sees each validation and may stop the run (status `pruned`, no test, no
    checkpoint kept); `extra` adds top-level record entries (the tuner's study and trial)."""
    t0 = time.perf_counter()
    job = set_up(cfg, extra)
    cfg, ctx, record = job.cfg, job.ctx, job.record
    loop = Loop(cfg, ctx, job.built.model, job.built.spec, job.bundle.num_labels, job.tracker,
                record, job.run_dir, observe)
    summary: dict[str, Any] = {}
    try:
        # The device peak covers preparation too (the head's feature pass is part of its cost).
        with DevicePeak(ctx.device) as peak:
            loaders = loop.prepare(job.splits, job.collate)
            with loop.interrupt:  # Ctrl-C stops at a step boundary (harness/interrupt.py)
                loop.fit(loaders)
            summary = loop.evaluate(loaders, peak)
        save(job, loop)
    except Pruned:
        record.update({R.STATUS: R.PRUNED, R.PRUNED_AT_STEP: loop.progress.step,
                       R.VAL_HISTORY: loop.progress.val_history, R.STEPS: loop.progress.step})
    except KeyboardInterrupt as exc:
        record[R.STATUS] = R.CANCELLED
        loop.save_checkpoint()
        exc.record_path = record[R.RECORD_PATH]  # type: ignore[attr-defined]  # for main's line
        raise
    except Exception as exc:
        record[R.STATUS] = R.FAILED
        record[R.ERROR] = f"{type(exc).__name__}: {exc}"
        record[R.FAILED_AT_STEP] = loop.progress.step
        if ctx.dist.main:
            (job.run_dir / R.ERROR_FILE).write_text(traceback.format_exc())
        raise
    finally:
        record[R.LAST_CHECKPOINT] = loop.last_checkpoint
        record[R.FINISHED_AT] = _now()
        record[R.TIME][R.TOTAL_S] = round(time.perf_counter() - t0, 3)
        params = record[R.PARAMS]
        summary.update({f"{R.PARAMS}/{k}": params[k] for k in (R.P_TRAINABLE, R.P_TOTAL)})
        job.tracker.finish(record, summary)
    if record[R.STATUS] in (R.FINISHED, R.PRUNED) and not cfg.keep_checkpoint and ctx.dist.main:
        shutil.rmtree(job.run_dir / "checkpoint", ignore_errors=True)
    return record


def set_up(cfg: Config, extra: dict[str, Any] | None = None) -> Setup:
    """Resolve a resume, start the processes, load data and model, open the record and tracker.

    Everything that can reject the user's input happens before anything is written."""
    cfg.dist = resolve_name(cfg.dist)  # before hashing: under torchrun none means ddp
    runs_dir = R.runs_dir(cfg.runs_dir)
    cfg, previous, run_dir = resumed_run(cfg, runs_dir)
    quiet_progress(cfg.progress)  # before any library draws a bar
    preflight(cfg, runs_dir)  # the folder is writable, the backbone fits the config
    device = pick_device(cfg.device)
    info = distributed.setup(cfg.dist, device, cfg.batch_size)
    device = distributed.local_device(device, info)
    ctx = Context(device, pick_precision(cfg.precision, device), info)
    seed_everything(cfg.seed)
    bundle = load_data(cfg)
    built = build_model(cfg, bundle.num_labels, device=device)
    splits = tokenize(bundle.splits, built.tokenizer, cfg.max_length)
    collate = DataCollatorWithPadding(built.tokenizer, return_tensors="pt")
    if previous is None:
        run_id = distributed.broadcast(new_run_id(cfg.method), info)  # rank 0's id for all
        run_dir = runs_dir / run_id
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=False)  # a clash of ids fails here, never merges
            lock.hold_run(run_dir)
        record = new_record(cfg, ctx, run_id, built, bundle)
    else:
        record = previous
        record.setdefault(R.RESUMED, []).append({"at": _now()})
        record.update({R.STATUS: R.RUNNING, R.ERROR: None})
    record[R.RECORD_PATH] = str(run_dir / R.RECORD_FILE)
    record[R.DIST] = info.record()
    record.update(extra or {})  # before the first write: a killed run's record has it too
    tracker = open_tracker(cfg, record, run_dir, info, resumed=previous is not None)
    return Setup(cfg, ctx, built, bundle, splits, collate, record, run_dir, tracker)


def resumed_run(cfg: Config, runs_dir: Path
                ) -> tuple[Config, dict[str, Any] | None, Path | None]:
    """(config, record, folder) of the run `resume=` names; (cfg, None, None) without it."""
    if not cfg.resume:
        return cfg, None, None
    run_dir = checkpoint.find_resumable(runs_dir, cfg.resume, config_hash(cfg), cfg.seed)
    if distributed.env_rank() == 0:  # one writer: a second resume of this run stops here
        lock.hold_run(run_dir)
    previous = json.loads((run_dir / R.RECORD_FILE).read_text())
    # The saved config is the run's; only how it reports may change, and any other key the
    # command line sets must agree with it.
    cfg = resumed_config(cfg, previous[R.CONFIG], run_dir.name)
    return cfg, previous, run_dir


def new_record(cfg: Config, ctx: Context, run_id: str, built: Built,
               bundle: DataBundle) -> R.Record:
    """The record of a run that starts now: what it is, before any result."""
    return R.Record({R.SCHEMA_KEY: R.SCHEMA, R.RUN_ID: run_id, R.METHOD: cfg.method,
            R.EXPERIMENT: cfg.experiment_name(), R.CONFIG_HASH: config_hash(cfg),
            R.STATUS: R.RUNNING, R.STARTED_AT: _now(), R.CONFIG: to_dict(cfg),
            R.METHOD_INFO: built.method_info, R.MODEL: built.model_info, R.DATA: bundle.info,
            R.PRECISION: ctx.precision, R.PARAMS: param_split(built.model), R.METRICS: {},
            R.MEMORY: {}, R.TIME: {}, R.ENV: environment(ctx.device), R.PRESET: preset_record(cfg)})


def preset_record(cfg: Config) -> dict[str, Any]:
    """Which preset applied (a presets file's entry or the code PRESET) and its values."""
    values, where = applied_preset(cfg.method, cfg.data, cfg.model, cfg.preset)
    return {R.PRESET_FROM: where, R.PRESET_VALUES: values}


def open_tracker(cfg: Config, record: dict[str, Any], run_dir: Path, info: DistInfo,
                 resumed: bool) -> Tracker | NullTracker:
    """Rank 0 writes the first record and opens W&B; the other ranks' tracker drops all."""
    if not info.main:
        return NullTracker()
    # A run killed outright (SIGKILL, power) still leaves a record saying it never finished.
    atomic_write_json(run_dir / R.RECORD_FILE, record)
    who = identity(cfg, record[R.PRECISION])  # W&B's name, group and tags for comparison
    return Tracker(run_dir, record[R.RUN_ID], {**record[R.CONFIG],
                                               R.CONFIG_HASH: record[R.CONFIG_HASH],
                                               R.EXPERIMENT: record[R.EXPERIMENT]},
                   who["group"], wandb_mode(cfg.wandb), cfg.wandb_project,
                   resume=resumed, name=who["name"], tags=who["tags"], progress=cfg.progress)


def save(job: Setup, loop: Loop) -> None:
    """What the run leaves behind: test predictions and (save=auto) the trained model."""
    cfg, record = job.cfg, job.record
    record[R.ARTIFACTS] = save_run(loop.model, job.run_dir, cfg, job.bundle.label_names,
                                   job.built.model_info, loop.test_predictions, job.ctx.dist,
                                   job.ctx.precision)
    record[R.STATUS] = R.FINISHED


def summary_line(record: R.Record) -> str:
    """The one line a user reads at the end of a run."""
    p, m, mem = record[R.PARAMS], record[R.METRICS], record[R.MEMORY]
    pct = 100 * p[R.P_TRAINABLE] / max(1, p[R.P_TOTAL])
    # A resumed run with no step left to measure has no measured peak.
    peak = mem.get(R.MEASURED_PEAK_BYTES)
    score = (f"test/accuracy={m[R.TEST_ACCURACY]:.4f}" if R.TEST_ACCURACY in m else
             f"val/best_accuracy={m[R.VAL_BEST_ACCURACY]:.4f} (validation only)")
    return (f"{record[R.METHOD]}: {score} "
            f"trainable={p[R.P_TRAINABLE]:,}/{p[R.P_TOTAL]:,} ({pct:.2f}%) "
            f"step_peak_mem={'—' if peak is None else human_bytes(peak)} "
            f"wall={record[R.TIME][R.TOTAL_S]:.1f}s record={record[R.RECORD_PATH]}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: key=value arguments; user errors are one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        print("config keys (key=value):\n" + describe())
        print("\nmethods (method=<name>) and their options (<method>.<option>=value):\n"
              + describe_methods())
        return EXIT_OK
    try:
        record = run(resolve(argv))
        distributed.cleanup(sync=True)
    except UserError as exc:
        if distributed.env_rank() == 0:  # one line, not one per process
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            # Every rank rejects the same input; the first rank to exit ends the job, so the
            # others wait for rank 0 to say why (its exit then stops them).
            time.sleep(USER_ERROR_GRACE_S)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        where = getattr(exc, "record_path", None)
        print(f"cancelled: the record {where} says so; resume={Path(where).parent.name} "
              "continues it" if where else "cancelled before the run started; nothing was "
              "written", file=sys.stderr)
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
    exit_process(main())
