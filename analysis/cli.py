"""Command-line plumbing shared by `python -m analysis.plots` and `python -m analysis.dashboard`."""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from analysis import results, tasks
from experiments.contract import record

EXIT_NO_RUNS = 2  # as the harness's user errors: nothing was written, and the message says why


def no_runs_message(where: str) -> str:
    """What to say when there is nothing to analyse."""
    return (f"no run records found in {where} (looked for */{record.RECORD_FILE}); train some "
            "first, e.g. `make experiment METHOD=head`, or point RUNS_DIR at them")


def parse_args(argv: list[str] | None, prog: str, doc: str | None) -> argparse.Namespace:
    """The options both commands take: where the runs are, where reports go, which source."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", nargs="?", default=None,
                        help="folder of run records, or of task folders of them "
                             "(default: $RUNS_DIR or ./runs)")
    parser.add_argument("--reports-dir", default=str(record.reports_dir()),
                        help="output folder (default: $REPORTS_DIR or ./reports)")
    parser.add_argument("--source", choices=("records", "wandb"), default="records",
                        help="read local records or the W&B API ($WANDB_ENTITY/$WANDB_PROJECT)")
    return parser.parse_args(argv)


def load_runs(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """The runs the options name, and a description of where they came from."""
    if args.source == "wandb":
        entity, project = os.environ.get("WANDB_ENTITY"), os.environ.get("WANDB_PROJECT")
        where = f"W&B project {entity + '/' if entity else ''}{project or 'tunebench'}"
        return results.load_wandb(), where
    runs_dir = record.runs_dir(args.runs_dir)
    if tasks.is_multitask(runs_dir):  # results/: one published folder per task
        return tasks.load_runs(runs_dir), str(runs_dir)
    return results.load_records(runs_dir), str(runs_dir)


def start(argv: list[str] | None, prog: str,
          doc: str | None) -> tuple[argparse.Namespace, pd.DataFrame, str] | None:
    """Parse, pick the file-only backend, load; None (after saying why) when there are no runs."""
    import matplotlib

    matplotlib.use("Agg")  # files only, also on machines with a display
    args = parse_args(argv, prog, doc)
    df, where = load_runs(args)
    if df.empty:
        print(f"error: {no_runs_message(where)}", file=sys.stderr)
        return None
    return args, df, where
