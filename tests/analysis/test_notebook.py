"""analysis/compare.ipynb executes top to bottom against real records, without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis" / "compare.ipynb"


def test_compare_notebook_executes(real_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("RUNS_DIR", str(real_runs))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs")

    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 runs (4 finished)" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # the six figures these runs support, each shown once
    assert "no LoRA rank sweep" in text
    tables = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| head" in o["data"]["text/markdown"] for o in tables)


def test_make_notebook_opens_it_in_jupyterlab_from_the_venv() -> None:
    """`make notebook` starts .venv's JupyterLab on this notebook (dry run: make -n)."""
    import subprocess

    root = NOTEBOOK.parents[1]
    out = subprocess.run(["make", "-n", "notebook"], cwd=root, capture_output=True, text=True,
                         timeout=60).stdout
    assert ".venv/bin/jupyter lab analysis/compare.ipynb" in out
    assert (root / ".venv" / "bin" / "jupyter-lab").is_file()
