"""The check `make experiment NPROC=N` runs before torchrun starts: N processes must each get a
core (CPU) or a device (CUDA), or the run is refused with one line and exit code 2. Then
torchrun itself, through `torchrun`: a rank that exits 2 (bad input, which rank 0 has already
said in one line) ends the job with exit code 2 and nothing more, instead of torchrun's traceback.

    python -m experiments.dist.launch NPROC [device]
    python -m experiments.dist.launch torchrun [torchrun's arguments] -m experiments.train ...
"""

from __future__ import annotations

import os
import sys

import torch

from experiments.harness.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR
from experiments.harness.config import UserError


def capacity(device_type: str) -> tuple[int, str]:
    """How many processes this machine can give one core or device each."""
    if device_type == "cuda":
        return torch.cuda.device_count(), "CUDA devices"
    try:
        return len(os.sched_getaffinity(0)), "CPU cores"
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1, "CPU cores"


def check_nproc(nproc: int, device_type: str) -> None:
    """UserError when `nproc` processes would share cores or devices."""
    if nproc < 1:
        raise UserError(f"NPROC={nproc} must be >= 1")
    have, what = capacity(device_type)
    if nproc > have:
        raise UserError(f"NPROC={nproc} processes but this machine has {have} {what}; "
                        f"use NPROC<={have}")


def precheck(argv: list[str]) -> int:
    """`python -m experiments.dist.launch NPROC [device]`: exit 2 with one line if too many."""
    try:
        nproc = int(argv[0])
    except (IndexError, ValueError):
        print(f"error: NPROC={argv[0] if argv else ''!r} is not an integer", file=sys.stderr)
        return EXIT_USER_ERROR
    want = argv[1] if len(argv) > 1 else "auto"
    kind = "cuda" if want.startswith("cuda") or (want == "auto" and torch.cuda.is_available()) \
        else "cpu"
    try:
        check_nproc(nproc, kind)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def torchrun(argv: list[str]) -> int:
    """torchrun's launch (its own argument parser and agent); a failed job's exit code is the
    ranks' own: 2 or 130 silently (the ranks said why), otherwise 1 with torchrun's summary of
    the failed ranks (not the traceback of torchrun's own frames)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent logs each failed rank before raising; a rank's own line, or the summary below,
    # says what matters. Its loggers set their own levels, so each is quietened by name.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        for code in (EXIT_USER_ERROR, EXIT_CANCELLED):
            if code in codes:
                return code
        print(exc.format_msg(), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(torchrun(args[1:]) if args[:1] == ["torchrun"] else precheck(args))
