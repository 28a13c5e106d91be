"""The direction of dependence and the record schema, checked on the source itself."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.contract import record as R

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("methods", "experiments", "analysis", "bench", "gpu")


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_import_neither_the_harness_nor_analysis(path: Path) -> None:
    assert not _imports(path) & {"experiments", "analysis", "bench"}


def test_analysis_imports_no_torch() -> None:
    code = ("import sys, analysis.results, analysis.plots, analysis.summary, analysis.dashboard, "
            "analysis.cli; assert 'torch' not in sys.modules, 'torch was imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_record_schema_imports_no_torch() -> None:
    code = "import sys, experiments.contract.record; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_method_order_is_the_registry_order() -> None:
    from methods import METHODS

    assert tuple(METHODS) == R.METHOD_ORDER


# Record keys distinctive enough that a string literal equal to one is a copy of the schema:
# memory and metric keys. (Plain words such as "method" or "status", and time keys such as
# "train_s", which the loop also uses as attribute names, are left out: they name other things.)
_DISTINCT = {v for k, v in vars(R).items() if k.isupper() and isinstance(v, str)
             and (v.endswith("_bytes") or "/" in v or v.endswith("_vs_predicted"))}


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def test_record_keys_are_spelled_in_one_module() -> None:
    assert "activations_peak_bytes" in _DISTINCT and "test/accuracy" in _DISTINCT
    offenders = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path == REPO / "experiments" / "contract" / "record.py":
                continue
            copies = _string_literals(path) & _DISTINCT
            if copies:
                offenders[str(path.relative_to(REPO))] = sorted(copies)
    assert not offenders, f"record keys spelled outside experiments/contract/record.py: {offenders}"


def test_nothing_points_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    outside = "../" + "shared"  # spelled apart, so this file does not match itself
    hits = [f for f in tracked if not f.startswith(".ci/")
            and outside in (REPO / f).read_text(errors="replace")]
    assert not hits


def test_the_design_shows_bitfit_as_it_is() -> None:
    """docs/DESIGN.md's worked example is methods/bitfit.py, whole: the page cannot drift."""
    design = (REPO / "docs" / "DESIGN.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", design, flags=re.S)
    source = (REPO / "methods" / "bitfit.py").read_text()
    assert source in blocks
    assert '"bitfit": bitfit,' in (REPO / "methods" / "__init__.py").read_text()
    assert "[docs/DESIGN.md](docs/DESIGN.md)" in (REPO / "README.md").read_text()


def test_the_design_example_runs_end_to_end(runs_dir: Path) -> None:
    """The example method trains through the harness and leaves a finished record."""
    from experiments.harness.config import resolve
    from experiments.train import run

    record = run(resolve(["method=bitfit", "model=tiny-bert", "train_size=64", "eval_size=32",
                          "max_steps=4", "batch_size=16", "wandb=disabled", "progress=false"]))
    assert record[R.STATUS] == R.FINISHED
    params = record[R.PARAMS]
    # biases + LayerNorm biases of a 2-layer BERT + the head train; nothing else
    assert 0 < params[R.P_TRAINABLE] < params[R.P_TOTAL] // 20
    assert (runs_dir / record[R.RUN_ID] / R.RECORD_FILE).is_file()
