"""`make bench` / `python -m bench`: run the benchmark sections, write JSON, figures and
BENCHMARKS.md.

    python -m bench                          # everything, on the embedded MiniLM (CUDA if present)
    python -m bench --only peft,inference    # some sections: methods, peft, inference, scaling,
                                             # levers, profile
    python -m bench --smoke                  # a tiny model, a few steps: checks the script works
    python -m bench --out DIR                # BENCHMARKS.md, bench.json and figures into DIR
    python -m bench --from-json reports/bench.json   # re-render the page and figures, no runs

Without --out, BENCHMARKS.md goes to the repository root and bench.json and the figures to
$REPORTS_DIR (reports/); --smoke writes everything into reports/bench-smoke/.
"""

from __future__ import annotations

import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.workloads import Settings
from experiments.harness.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR, split
from experiments.harness.config import UserError, coerce, parse_overrides

SECTIONS = ("methods", "peft", "inference", "scaling", "levers", "profile")
USAGE = ("usage: python -m bench [--smoke] [--only " + ",".join(SECTIONS) +
         "] [--out DIR] [--device auto|cpu|cuda] [--rounds N] [--no-progress] "
         "[--from-json FILE] [model=... batch_size=N seq_len=N seed=N]")


def smoke_settings(device: torch.device, precision: str) -> Settings:
    """A tiny random BERT, a few steps of everything: seconds, for the test suite."""
    return Settings(device, precision, model="tiny-bert", batch_size=4, seq_len=16, warmup=2,
                    rounds=3, pairs=3, infer_rounds=(3, 3), ranks=(1, 4), seqs=(16, 32),
                    scale_rounds=2, progress=False,
                    lever_sizes=("train_size=48", "eval_size=16", "max_steps=3",
                                 "batch_size=16"), lever_rounds=1, profile_steps=2)


@dataclass
class Plan:
    """What to run and where its outputs go."""

    settings: Settings
    sections: list[str]
    markdown: Path
    reports: Path
    smoke: bool
    from_json: Path | None


# Flags of `python -m bench`, and whether each takes a value (the harness's convention).
FLAGS = {"smoke": False, "no-progress": False, "only": True, "out": True, "device": True,
         "rounds": True, "from-json": True, "help": False}
# key=value overrides: the workload's shape (`make bench ARGS="batch_size=16 seq_len=128"`).
OVERRIDABLE = ("model", "batch_size", "seq_len", "seed")


def parse(argv: list[str]) -> Plan:
    """The plan the arguments ask for; UserError if they are bad."""
    from experiments.harness.runtime import pick_device

    args = split(argv, FLAGS)
    opts = {f"--{k}": v for k, v in args.flags.items()}
    overrides = parse_overrides(args.overrides)
    bad = [k for k in overrides if k not in OVERRIDABLE]
    if bad:
        raise UserError(f"unknown bench key {bad[0]!r}; key=value overrides: "
                        f"{', '.join(OVERRIDABLE)}")
    device = pick_device(str(opts.get("--device", "auto")))
    precision = "bf16-mixed" if device.type == "cuda" else "fp32"
    smoke = bool(opts.get("--smoke"))
    s = smoke_settings(device, precision) if smoke else Settings(device, precision)
    if "--rounds" in opts:
        rounds = str(opts["--rounds"])
        if not rounds.isdigit() or int(rounds) < 2:
            raise UserError(f"--rounds {rounds} must be an integer >= 2")
        s.rounds = s.pairs = int(rounds)
    if opts.get("--no-progress"):
        s.progress = False
    hints = typing.get_type_hints(Settings)
    for key, raw in overrides.items():
        setattr(s, key, coerce(key, raw, hints[key]))
    sections = list(SECTIONS)
    if "--only" in opts:
        sections = [x.strip() for x in str(opts["--only"]).split(",") if x.strip()]
        bad = [x for x in sections if x not in SECTIONS]
        if bad or not sections:
            raise UserError(f"--only {opts['--only']}: choose from {', '.join(SECTIONS)}")
    if "--out" in opts:
        out = Path(str(opts["--out"]))
        md, reports = out / "BENCHMARKS.md", out
    elif smoke:
        reports = Path(os.environ.get("REPORTS_DIR", "reports")) / "bench-smoke"
        md = reports / "BENCHMARKS.md"
    else:
        md, reports = Path("BENCHMARKS.md"), Path(os.environ.get("REPORTS_DIR", "reports"))
    source = Path(str(opts["--from-json"])) if "--from-json" in opts else None
    if source is not None and not source.is_file():
        raise UserError(f"--from-json {source}: no such file; run `make bench` first")
    return Plan(s, sections, md, reports, smoke, source)


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: a run record's provenance plus the hardware and peft."""
    import psutil

    from experiments.harness.provenance import cpu_model, environment

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    return {**environment(device), "cpu": cpu_model(), "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "peft": peft_version}


def load_results(path: Path) -> dict[str, Any]:
    """A bench.json written earlier; UserError when it is not one."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--from-json {path}: not readable JSON ({exc})") from exc
    if not isinstance(results, dict) or results.get("schema") != 1 or "sections" not in results:
        raise UserError(f"--from-json {path}: not a bench.json (schema 1) written by make bench")
    return results


def run_sections(s: Settings, sections: list[str]) -> dict[str, Any]:
    """Run the chosen sections in order; each result with its wall time."""
    from bench import cost, inference, levers, peft_vs_ours, profile, scaling

    modules = {"methods": cost, "peft": peft_vs_ours, "inference": inference,
               "scaling": scaling, "levers": levers, "profile": profile}
    out = {}
    for name in sections:
        print(f"[bench] {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out[name] = modules[name].run(s)
        out[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run, then write bench.json, figures and BENCHMARKS.md; 2 with one line on bad input."""
    from bench import report
    from experiments.contract.io import atomic_write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(USAGE)
        return EXIT_OK
    t0 = time.perf_counter()
    try:
        plan = parse(argv)
        if plan.from_json is not None:
            results = load_results(plan.from_json)
        else:
            s = plan.settings
            results = {
                "schema": 1, "smoke": plan.smoke,
                "command": "make bench" + (f' ARGS="{" ".join(argv)}"' if argv else ""),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine(s.device), "settings": report.settings_dict(s),
                "sections": run_sections(s, plan.sections)}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cancelled: nothing written (the previous results are as they were)",
              file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # one line, not a traceback; BENCH_DEBUG=1 shows it
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: the benchmark failed ({type(exc).__name__}: {exc}); nothing written; "
              "BENCH_DEBUG=1 shows the traceback", file=sys.stderr)
        return EXIT_FAILED
    json_path = plan.reports / "bench.json"
    if plan.from_json is None:
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(json_path, results)
    elif plan.from_json.resolve() != json_path.resolve():
        json_path = plan.from_json
    figures = report.figures(results, plan.reports)
    report.write_markdown(results, plan.markdown, figures, json_path)
    print(report.verdicts(results))
    print(f"written: {plan.markdown}, {json_path}" + "".join(f", {f}" for f in figures))
    return EXIT_OK
