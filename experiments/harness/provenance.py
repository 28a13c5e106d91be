"""Provenance: who ran what, where: run ids, package versions, device, git state."""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments.contract import record as R

REPO_ROOT = Path(__file__).resolve().parents[2]


def new_run_id(method: str) -> str:
    """A sortable, collision-safe id: UTC time, method, random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{method}-{secrets.token_hex(3)}"


def git_info(root: Path = REPO_ROOT, timeout: float = 10) -> dict[str, Any]:
    """The commit and dirty flag of the checkout at `root` (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                 timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {R.GIT_COMMIT: commit, R.GIT_DIRTY: bool(status) if status is not None else None}


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
    import torch
    import transformers

    try:  # absent where only the GPU check's packages are (a device without `datasets`)
        import datasets

        datasets_version: str | None = datasets.__version__
    except ImportError:
        datasets_version = None

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets_version,
            "platform": platform.platform(), "device": str(device),
            "device_name": name, "cpu_threads": torch.get_num_threads(),
            **git_info(), "argv": sys.argv, **placement()}


def placement() -> dict[str, Any]:
    """Where this run ran: the host, the suite's executor and, under Ray, the node's id."""
    return {R.HOST: platform.node(), R.EXECUTOR: os.environ.get(R.EXECUTOR_ENV) or "local",
            R.RAY_NODE_ID: os.environ.get(R.RAY_NODE_ID_ENV)}
