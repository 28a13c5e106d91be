"""Tracking: a W&B run (offline unless logged in), metrics.jsonl and the local record.

The local record `runs/<run_id>/record.json` is the contract with analysis; W&B is a mirror.
A W&B failure is reported once and never fails the run or loses the record.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.contract.io import atomic_write_json, jsonable

EPOCH_KEY = "train/epoch"  # the x axis W&B plots validation metrics against


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def wandb_mode(requested: str) -> str:
    """auto -> $WANDB_MODE if set, else online when a W&B key is configured, else offline."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env:
        return "disabled" if env == "disabled" else env
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    try:
        if netrc.exists() and "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def bars_shown(progress: bool) -> bool:
    """Progress bars only on a terminal: piped to a file, every redraw would be a line."""
    return progress and sys.stderr.isatty()


def quiet_progress(progress: bool) -> None:
    """Without bars (progress=false, or no terminal), also silence the libraries' own bars:
    transformers' "Loading weights", the hub's downloads and datasets' maps."""
    if bars_shown(progress):
        return
    # The environment reaches libraries imported later (and the processes a run starts).
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _short(name: str) -> str:
    """A data or model name as W&B shows it: a file's or folder's stem, `glue:mrpc` as
    `glue-mrpc`."""
    path = Path(name)
    if os.sep in name or path.suffix:
        name = path.stem if path.suffix else path.name
    return name.replace(":", "-").replace("/", "-")


def identity(cfg: Any, precision: str) -> dict[str, Any]:
    """How W&B names the run so runs can be told apart and compared: the name
    `<experiment>-<data>-s<seed>` (the experiment is the method unless named), the group
    `<experiment>-<data>` (seeds of one experiment on one data set together) and tags for the
    method, data, model and precision."""
    data, experiment = _short(cfg.data), cfg.experiment_name()
    tags = [f"method:{cfg.method}", f"data:{data}", f"model:{_short(cfg.model)}",
            f"precision:{precision}"]
    return {"name": f"{experiment}-{data}-s{cfg.seed}", "group": f"{experiment}-{data}",
            "tags": [t[:64] for t in tags]}  # W&B refuses tags over 64 characters


class Tracker:
    """One run's outputs: metrics.jsonl, record.json and the W&B run."""

    def __init__(self, run_dir: Path, run_id: str, config: dict[str, Any], group: str,
                 mode: str, project: str, resume: bool = False, name: str | None = None,
                 tags: list[str] | None = None, progress: bool = False) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.name, self.tags = name or run_id, list(tags or [])
        # progress=true with no terminal: a plain line per logged step instead of a bar
        self.plain_lines = progress and not bars_shown(progress)
        self._held: dict[str, Any] = {}
        self.metrics_path = run_dir / R.METRICS_FILE
        self.metrics_file = open(self.metrics_path, "a")  # noqa: SIM115 (closed in finish)
        self.wandb: Any = None
        self.wandb_info: dict[str, Any] = {"mode": mode}
        if resume:
            self.wandb_info[R.RESUMED] = True
        if mode != "disabled":
            self._start_wandb(config, group, mode, project, resume)

    def position(self) -> int:
        """How far metrics.jsonl is written (a checkpoint stores it)."""
        self.metrics_file.flush()
        return self.metrics_file.tell()

    def truncate_to(self, offset: int) -> None:
        """Drop history written after a checkpoint, so a resumed run's history has no repeats."""
        self.metrics_file.flush()
        self.metrics_file.truncate(offset)
        self.metrics_file.seek(offset)

    def _plain_line(self, metrics: dict[str, Any], step: int) -> None:
        """One line per logging interval (the training loss's); a validation in between rides
        on the next line."""
        if "train/loss" not in metrics:
            self._held = {k: v for k, v in metrics.items() if k.startswith("val/")}
            return
        shown = {**metrics, **self._held}
        self._held = {}
        print(f"step {step}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items()),
              file=sys.stderr, flush=True)

    def _start_wandb(self, config: dict[str, Any], group: str, mode: str, project: str,
                     resume: bool) -> None:
        try:
            self.wandb = self._init(config, group, mode, project, resume)
        except Exception as exc:  # W&B must never take the run down with it
            if mode != "online":
                self._wandb_failed("start", exc)
                return
            # Online but unreachable or not logged in: keep a W&B run anyway, offline.
            print(f"warning: W&B online start failed ({_first_line(exc)}); logging this run "
                  "offline instead (upload later with `wandb sync`)", file=sys.stderr)
            self.wandb_info.update(mode="offline", error=f"online start: {_first_line(exc)}")
            try:
                self.wandb = self._init(config, group, "offline", project, resume)
            except Exception as exc2:
                self._wandb_failed("offline start", exc2)
                return
        self.wandb_info.update({"path": getattr(self.wandb, "path", None),
                                "dir": getattr(self.wandb, "dir", None)})

    def _init(self, config: dict[str, Any], group: str, mode: str, project: str,
              resume: bool) -> Any:
        import wandb

        # A resumed run continues the same W&B run: the same id and run folder, resume="allow".
        # Online, W&B appends to it. Offline, W&B cannot resume (wandb 0.31): it writes a second
        # offline-run-*-<id> folder whose run record is marked `resume`, and `wandb sync` of
        # both uploads them in order of start time into the one run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or "tunebench",
                group=group, job_type="train", name=self.name, id=self.run_id, tags=self.tags,
                config=config, dir=str(self.run_dir), mode=mode, reinit="finish_previous",
                resume="allow" if resume else None,
                # console="wrap": what the run prints (and its errors) fills W&B's Logs tab.
                settings=wandb.Settings(silent=True, console="wrap", init_timeout=60))
        # Validation metrics plot against epochs (fractional: eval_every lands mid-epoch).
        run.define_metric(EPOCH_KEY)
        run.define_metric("val/*", step_metric=EPOCH_KEY)
        return run

    def _wandb_failed(self, what: str, exc: BaseException) -> None:
        msg = _first_line(exc)
        print(f"warning: W&B {what} failed ({msg}); continuing with the local record only",
              file=sys.stderr)
        self.wandb_info["error"] = f"{what}: {msg}"
        self.wandb = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append to metrics.jsonl and W&B; without a bar, one line per logging interval."""
        self.metrics_file.write(json.dumps({"step": step, **metrics}, default=jsonable) + "\n")
        self.metrics_file.flush()
        if self.plain_lines:
            self._plain_line(metrics, step)
        if self.wandb is not None:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as exc:
                self._wandb_failed("log", exc)

    def finish(self, record: dict[str, Any], summary: dict[str, Any]) -> Path:
        """Write the record atomically, then set the W&B summary and close the W&B run."""
        record.setdefault(R.ENV, {})[R.WANDB] = self.wandb_info
        path = self.run_dir / R.RECORD_FILE
        atomic_write_json(path, record)
        self.metrics_file.close()
        if self.wandb is not None:
            try:
                self.wandb.summary.update(summary)
                self._log_model(record)
                self.wandb.finish(exit_code=0 if record.get(R.STATUS) == R.FINISHED else 1)
            except Exception as exc:
                self._wandb_failed("finish", exc)
        return path


    def _log_model(self, record: dict[str, Any]) -> None:
        """The saved model folder as a W&B artifact of type `model` (offline, it is stored
        with the run and uploaded by `wandb sync`)."""
        import wandb

        folder = self.run_dir / R.MODEL_DIR
        if not folder.is_dir():
            return
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"model-{self.name}")
        artifact = wandb.Artifact(name, type="model", metadata={
            R.RUN_ID: self.run_id, R.METRICS: record.get(R.METRICS, {})})
        # File by file (add_dir prints a line); immutable: the folder does not change after the
        # run, so W&B references the files instead of copying them into its staging area.
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            artifact.add_file(str(path), name=str(path.relative_to(folder)), policy="immutable")
        self.wandb.log_artifact(artifact)


class NullTracker:
    """What ranks other than 0 log to: nothing (rank 0 alone writes metrics, record and W&B)."""

    def position(self) -> int:
        """No file: offset 0."""
        return 0

    def truncate_to(self, offset: int) -> None:
        """Nothing to drop."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Dropped."""

    def finish(self, record: dict[str, Any], summary: dict[str, Any]) -> None:
        """Nothing to write."""
