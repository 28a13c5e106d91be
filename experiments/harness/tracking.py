"""Tracking: a W&B run (offline unless logged in), metrics.jsonl and the local record.

The local record `runs/<run_id>/record.json` is the contract with analysis; W&B is a mirror.
A W&B failure is reported once and never fails the run or loses the record.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.contract.io import atomic_write_json, jsonable


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


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


class Tracker:
    """One run's outputs: metrics.jsonl, record.json and the W&B run."""

    def __init__(self, run_dir: Path, run_id: str, config: dict[str, Any], group: str,
                 mode: str, project: str, resume: bool = False) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
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
            return wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or "tunebench",
                group=group, job_type="train", name=self.run_id, id=self.run_id,
                config=config, dir=str(self.run_dir), mode=mode, reinit="finish_previous",
                resume="allow" if resume else None,
                settings=wandb.Settings(silent=True, console="off", init_timeout=60))

    def _wandb_failed(self, what: str, exc: BaseException) -> None:
        msg = _first_line(exc)
        print(f"warning: W&B {what} failed ({msg}); continuing with the local record only",
              file=sys.stderr)
        self.wandb_info["error"] = f"{what}: {msg}"
        self.wandb = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append to metrics.jsonl and W&B."""
        self.metrics_file.write(json.dumps({"step": step, **metrics}, default=jsonable) + "\n")
        self.metrics_file.flush()
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
                self.wandb.finish(exit_code=0 if record.get(R.STATUS) == R.FINISHED else 1)
            except Exception as exc:
                self._wandb_failed("finish", exc)
        return path


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
