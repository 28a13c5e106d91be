"""Tracking: a W&B run (offline unless logged in) and the local record, always both.

The local record `runs/<run_id>/record.json` is the contract with analysis; W&B is a mirror.
A W&B failure is reported once and never fails the run or loses the record.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

SCHEMA = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


def new_run_id(method: str) -> str:
    """A sortable, collision-safe id: UTC time, method, random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{method}-{secrets.token_hex(3)}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp file in the same folder, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; records are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def git_info() -> dict[str, Any]:
    """The commit and dirty flag of the code that ran (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, where platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Any) -> dict[str, Any]:
    """Provenance: versions, device, git state."""
    import datasets
    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "platform": platform.platform(), "device": str(device),
            "device_name": name, "cpu_threads": torch.get_num_threads(),
            **git_info(), "argv": sys.argv}


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
        self.metrics_path = run_dir / "metrics.jsonl"
        self.metrics_file = open(self.metrics_path, "a")  # noqa: SIM115 (closed in finish)
        self.wandb: Any = None
        self.wandb_info: dict[str, Any] = {"mode": mode}
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
        self.metrics_file.write(json.dumps({"step": step, **metrics}, default=_jsonable) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as exc:
                self._wandb_failed("log", exc)

    def finish(self, record: dict[str, Any], summary: dict[str, Any]) -> Path:
        """Write the record atomically, then set the W&B summary and close the W&B run."""
        record.setdefault("env", {})["wandb"] = self.wandb_info
        path = self.run_dir / "record.json"
        atomic_write_json(path, record)
        self.metrics_file.close()
        if self.wandb is not None:
            try:
                self.wandb.summary.update(summary)
                self.wandb.finish(exit_code=0 if record.get("status") == "finished" else 1)
            except Exception as exc:
                self._wandb_failed("finish", exc)
        return path


def read_wandb_file(path: str | Path) -> dict[str, Any]:
    """What an offline W&B run file holds: run info, final summary and history rows.

    The `.wandb` file is a LevelDB-style log (7-byte file header, then 32 KiB blocks of
    records with a 7-byte header: crc32, length, type) of protobuf `Record`s. Used by the tests
    to check what W&B would sync, without a server.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = Path(path).read_bytes(), 32768, 7
    chunks: list[bytes] = []
    partial = b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            partial = (b"" if kind == 2 else partial) + chunk
        elif kind == 4:
            chunks.append(partial + chunk)
    out: dict[str, Any] = {"run": {}, "summary": {}, "history": [], "config": {}}
    for raw in chunks:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"id": rec.run.run_id, "project": rec.run.project,
                          "group": rec.run.run_group, "job_type": rec.run.job_type}
            out["config"] = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.summary.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.history.item})
    return out


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
