"""Checks that need more than the config's values, run before any data or weights load.

`validate` checks what the values alone decide (ranges, choices). These need a little of the
world: whether the runs folder can be written, and what the backbone is (its config and
tokenizer only, `experiments.inputs.backbones.check_backbone`). A bad input then fails in a
second with one line, not after minutes of loading, and nothing is written under the runs folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from experiments.harness.config import Config, UserError
from experiments.inputs.backbones import check_backbone


def check_writable(runs_dir: Path) -> None:
    """UserError unless run folders can be made in `runs_dir` (tried with a temporary file in
    it, or in its nearest existing parent; permission bits alone do not bind root, and a
    read-only mount ignores them)."""
    target = runs_dir.absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    fix = "pass runs_dir= (or RUNS_DIR=) a folder you can write to"
    if not target.is_dir():
        raise UserError(f"runs folder {runs_dir}: {target} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise UserError(f"runs folder {runs_dir} is not writable ({target}: "
                        f"{exc.strerror or exc}); {fix}") from exc


def preflight(cfg: Config, runs_dir: Path) -> None:
    """Every check of `cfg` against the machine and the backbone, before anything loads."""
    check_writable(runs_dir)
    check_backbone(cfg)
