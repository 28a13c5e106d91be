"""Suites: many runs of the one harness, resumable, then plots and a summary (tuning: tune.py).

    make suite SUITE=quick          # python -m experiments.tools.suite quick
    make suite SUITE=quick DRY=1    # list what would run
    make suite SUITE=quick EXECUTOR=ray   # every run as a Ray task (docs/distributed.md)

A suite file (`experiments/suites/<name>.yaml`) lists experiments (a name, a method and the
overrides that differ from the defaults) and seeds; `sweeps:` entries expand a grid. A run whose
finished record has the same config hash and seed is skipped, so an interrupted suite resumes
where it stopped. Each run is its own process: a crash or a memory spike in one run cannot take
the suite, or the next run's memory measurement, with it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.contract import record as R
from experiments.harness.cli import EXIT_FAILED, EXIT_OK, run_main, split
from experiments.harness.config import UserError, config_hash, parse_overrides, resolve
from experiments.harness.lock import claim_job
from experiments.tools.executors import LocalExecutor, make_executor

HERE = Path(__file__).resolve().parents[1]  # experiments/: suites/ lives there
SUITES_DIR = HERE / "suites"


@dataclass
class Job:
    """One run: an experiment name, its key=value overrides, and a seed."""

    name: str
    overrides: dict[str, Any]
    seed: int
    hash: str = ""
    status: str = "pending"  # pending | done | finished | failed
    detail: dict[str, Any] = field(default_factory=dict)

    def args(self) -> list[str]:
        """The command-line arguments of this run."""
        kv = {**self.overrides, "seed": self.seed, "name": self.name}
        return [f"{k}={_fmt(v)}" for k, v in kv.items()]


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"no {what} {path.stem!r} ({path}); known: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def suite_path(name: str) -> Path:
    """A suite's file: a name in experiments/suites/, or a path."""
    return Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"


def load_suite(name: str) -> list[Job]:
    """The jobs of a suite by name (experiments/suites/<name>.yaml) or path."""
    path = suite_path(name)
    data = _read_yaml(path, "suite")
    seeds = data.get("seeds", [0])
    defaults = data.get("defaults", {}) or {}
    jobs: list[Job] = []
    for exp in data.get("experiments", []) or []:
        exp = dict(exp)
        label = exp.pop("name", None) or exp.get("method", "run")
        own = exp.pop("seeds", seeds)  # an experiment may run fewer seeds (a sweep's points)
        jobs += [Job(label, {**defaults, **exp}, s) for s in own]
    for sweep in data.get("sweeps", []) or []:
        sweep = dict(sweep)
        label = sweep.pop("name", "sweep")
        grid = sweep.pop("grid", {})
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values, strict=True))
            tag = ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
            jobs += [Job(f"{label}:{tag}", {**defaults, **sweep, **point}, s) for s in seeds]
    if not jobs:
        raise UserError(f"{path}: lists no experiments")
    return jobs


def finished_runs(runs_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(config_hash, seed) -> the newest finished record under runs_dir."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(runs_dir.glob(f"*/{R.RECORD_FILE}")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a corrupt record is analysis's to report; here it only means "not done"
        if rec.get(R.STATUS) == R.FINISHED and R.CONFIG_HASH in rec:
            out[(rec[R.CONFIG_HASH], rec.get(R.CONFIG, {}).get("seed"))] = rec
    return out


def plan(jobs: list[Job], runs_dir: Path) -> list[Job]:
    """Resolve every job's config (rejecting bad ones up front) and mark those already done."""
    done = finished_runs(runs_dir)
    for job in jobs:
        try:
            cfg = resolve([f"{k}={v}" for k, v in [*job.overrides.items(), ("seed", job.seed)]])
        except UserError as exc:
            raise UserError(f"experiment {job.name!r}: {exc}") from exc
        job.hash = config_hash(cfg)
        rec = done.get((job.hash, job.seed))
        if rec is not None:
            job.status, job.detail = "done", rec
    return jobs


def run_job(job: Job, runs_dir: Path) -> None:
    """Run one job in its own process; its outcome lands in job.status / job.detail."""
    env = {**os.environ, "RUNS_DIR": str(runs_dir)}  # the child resolves it like any run
    cmd = [sys.executable, "-m", "experiments.train", *job.args()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    job.detail = {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1)}
    match = finished_runs(runs_dir).get((job.hash, job.seed))
    if proc.returncode == 0 and match is not None:
        job.status, job.detail = "finished", match
    else:
        job.status = "failed"
        job.detail["output"] = proc.stdout[-2000:]


def run_if_not_done(job: Job, runs_dir: Path) -> None:
    """run_job, unless a finished record appeared since the plan: an executor's retry of a job
    whose node died after it had finished must not run it twice. The job's claim (a lock in the
    runs folder) makes a second suite on the same folder wait while another runs the job, then
    take that run's record instead of running it again."""
    with claim_job(runs_dir, f"{job.hash}-seed{job.seed}"):
        rec = finished_runs(runs_dir).get((job.hash, job.seed))
        if rec is not None:
            job.status, job.detail = "done", rec
            return
        run_job(job, runs_dir)


def run_suite(jobs: list[Job], runs_dir: Path, suite: str, dry: bool = False,
              executor: Any = None) -> list[Job]:
    """Run every pending job through the executor (in order, here, by default); failures are
    logged and the suite goes on."""
    jobs = plan(jobs, runs_dir)
    pending = [j for j in jobs if j.status == "pending"]
    print(f"suite {suite}: {len(jobs)} runs, {len(jobs) - len(pending)} already done, "
          f"{len(pending)} to run", flush=True)
    for j in jobs:
        mark = "done" if j.status == "done" else ("would run" if dry else "to run")
        print(f"  {mark:<9} {j.name:<28} seed={j.seed} hash={j.hash}")
    if dry:
        return jobs
    runs_dir.mkdir(parents=True, exist_ok=True)
    log = runs_dir / f"suite-{Path(suite).stem}.jsonl"

    def report(job: Job) -> None:
        with open(log, "a") as f:
            f.write(json.dumps({"time": time.time(), "name": job.name, "seed": job.seed,
                                "hash": job.hash, "status": job.status,
                                "run_id": job.detail.get(R.RUN_ID),
                                "returncode": job.detail.get("returncode")}) + "\n")
        if job.status == "failed":
            print(f"  failed (exit {job.detail.get('returncode')}); the suite goes on; "
                  f"see {log}", flush=True)

    (executor or LocalExecutor()).run(pending, runs_dir, run_if_not_done, report)
    return jobs


def table(jobs: list[Job]) -> str:
    """A plain-text table of each job's outcome."""
    rows = [f"{'experiment':<28} {'seed':>4} {'status':<9} {'test acc':>8} {'train s':>8}"]
    for j in jobs:
        m = j.detail.get(R.METRICS, {})
        acc = m.get(R.TEST_ACCURACY)
        t = j.detail.get(R.TIME, {}).get(R.TRAIN_S)
        rows.append(f"{j.name:<28} {j.seed:>4} {j.status:<9} "
                    f"{'' if acc is None else f'{acc:.4f}':>8} {'' if t is None else t:>8}")
    return "\n".join(rows)


def regenerate_reports(runs_dir: Path) -> bool:
    """Plots, summary and dashboard from every record, through the analysis commands.

    They run as their own processes, as a user would run them: a broken analysis is reported
    (one line, the suite exits 1) rather than hidden, and the runs on disk are never at risk."""
    ok = True
    for module in ("analysis.plots", "analysis.dashboard"):
        proc = subprocess.run([sys.executable, "-m", module, str(runs_dir)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            print(f"error: `python -m {module}` failed ({last}); the runs are saved, run "
                  f"`make plots` again once it is fixed", file=sys.stderr)
            ok = False
    return ok


FLAGS = {"dry": False, "no-reports": False, "seeds": True, "executor": True,
         "help": False}
USAGE = ("usage: python -m experiments.tools.suite [SUITE] [--dry] [--no-reports] [--seeds 0,1] "
         "[--executor local|ray] [key=value ...]\n"
         "SUITE: a name in experiments/suites/ (smoke, quick, paper) or a YAML path; key=value "
         "overrides apply to every run (e.g. device=cpu)")


def main(argv: list[str] | None = None) -> int:
    """Command line: a suite name, flags, and key=value overrides."""
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    args = split(argv, FLAGS, max_positionals=1)
    if args.flag("help"):
        print(__doc__ + "\n" + USAGE)
        return EXIT_OK
    extra = parse_overrides(args.overrides)
    runs_dir = R.runs_dir()
    dry = bool(args.flag("dry"))
    suite = args.positionals[0] if args.positionals else "smoke"
    jobs = with_overrides(load_suite(suite), extra)
    if args.flag("seeds") is not None:  # e.g. --seeds 0: every experiment's first seed first
        wanted = _seeds(str(args.flag("seeds")))
        jobs = [j for j in jobs if j.seed in wanted]
    resources = _read_yaml(suite_path(suite), "suite").get("resources")
    executor = make_executor(_executor_name(args.flag("executor"), dry), resources)
    jobs = run_suite(jobs, runs_dir, suite, dry=dry, executor=executor)
    if dry:
        return EXIT_OK
    reports_ok = args.flag("no-reports") or regenerate_reports(runs_dir)
    print(table(jobs))
    failed = sum(j.status == "failed" for j in jobs)
    return EXIT_FAILED if failed or not reports_ok else EXIT_OK


def _executor_name(flag: str | bool | None, dry: bool) -> str | None:
    """The --executor a command named; a dry run lists the plan and needs none."""
    return None if dry else (str(flag) if flag else None)


def _seeds(text: str) -> set[int]:
    """`0,1` -> {0, 1}; a UserError for anything else."""
    try:
        return {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise UserError(f"--seeds {text!r}: give seeds as integers, e.g. --seeds 0,1") from None


def with_overrides(jobs: list[Job], extra: dict[str, str]) -> list[Job]:
    """The command line's key=value overrides applied to every job (they win)."""
    for job in jobs:
        job.overrides.update(extra)
    return jobs


if __name__ == "__main__":
    sys.exit(main())
