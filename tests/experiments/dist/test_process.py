"""Several processes (CPU, gloo, 2 ranks under torchrun): DDP and FSDP match one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.dist import launch
from experiments.dist.strategy import exit_process
from experiments.harness.config import resolve
from experiments.harness.evaluation import eval_batches
from experiments.train import main, run

REPO = Path(__file__).resolve().parents[3]
# Tolerances on 5 steps (CPU fp32): DDP averages the same gradients in another order; FSDP
# also reduce-scatters them and clips a norm summed from shards. Both measured ~1e-7 here.
RTOL = {"ddp": 1e-4, "fsdp": 1e-5}
NEEDS_TWO = pytest.mark.skipif(launch.capacity("cpu")[0] < 2, reason="needs 2 CPU cores")


def _args(model: str, method: str, *extra: str) -> list[str]:
    return [f"method={method}", f"model={model}", "train_size=64", "eval_size=32",
            "batch_size=8", "max_steps=5", "log_every=1", "classifier_dropout=0",
            "wandb=disabled", "progress=false", "lr=1e-3", *extra]


def _torchrun(args: list[str], runs_dir: Path, nproc: int = 2) -> dict[str, Any]:
    """Run the harness on `nproc` processes; returns rank 0's record."""
    # faulthandler: a rank killed by a signal prints where it was
    env = {**os.environ, "RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1",
           "PYTHONFAULTHANDLER": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          f"--nproc_per_node={nproc}", "-m", "experiments.train", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    paths = sorted(runs_dir.glob("*/record.json"))
    assert len(paths) == 1, "only rank 0 writes a run folder"
    return json.loads(paths[0].read_text())


def _losses(record: dict[str, Any]) -> list[float]:
    rows = Path(record["record_path"]).with_name("metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["train/loss"] for r in rows if "train/loss" in r]


def _single(args: list[str]) -> dict[str, Any]:
    return run(resolve(args))


@NEEDS_TWO
@pytest.mark.parametrize(("method", "strategy"), [
    ("full", "ddp"), ("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp"), ("head", "ddp"),
    ("embedding", "ddp"), ("soft_prompt", "ddp")])
def test_same_loss_trajectory_as_one_process(nodrop: str, method: str, strategy: str,
                                             tmp_path: Path) -> None:
    args = _args(nodrop, method, "keep_checkpoint=true")
    one = _single(args)
    many = _torchrun([*args, f"dist={strategy}"], tmp_path / "dist")
    assert many["dist"] == {"world_size": 2, "strategy": strategy, "backend": "gloo"}
    a, b = _losses(one), _losses(many)
    assert len(a) == len(b) == 5
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    print(f"\n{method} {strategy}: max relative loss difference over 5 steps {worst:.2e}")
    assert b == pytest.approx(a, rel=RTOL[strategy]), (a, b)
    assert a[0] != a[-1]  # the weights did move: the comparison is not of a constant
    # evaluation gathered every rank's predictions: each example counted once
    assert many["metrics"]["test/n"] == one["metrics"]["test/n"] == 32
    assert many["metrics"]["test/accuracy"] == pytest.approx(one["metrics"]["test/accuracy"])
    assert [r["rank"] for r in many["memory"]["per_rank"]] == [0, 1]
    _same_checkpoint(one, many)
    if (method, strategy) == ("full", "fsdp"):
        _ledger_is_16n_over_g(many, nodrop)


@NEEDS_TWO
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_short_last_batch_neither_hangs_nor_reweights(nodrop: str, strategy: str,
                                                        tmp_path: Path) -> None:
    """97 rows in batches of 16: the last global batch has 1 row, so rank 1's share is empty.
    Both ranks still take 7 steps (rank 1 a padding row), and that step's loss is the single
    row's, as in one process (it used to hang: rank 0 took 7 steps, rank 1 took 6)."""
    args = [f"model={nodrop}", "method=full", "train_size=97", "batch_size=16", "eval_size=32",
            "epochs=1", "log_every=1", "classifier_dropout=0", "wandb=disabled",
            "progress=false", "lr=1e-3"]
    one = _single(args)
    many = _torchrun([*args, f"dist={strategy}"], tmp_path / "dist")
    a, b = _losses(one), _losses(many)
    assert len(a) == len(b) == one["steps"] == many["steps"] == 7
    assert b == pytest.approx(a, rel=RTOL[strategy]), (a, b)


def _same_checkpoint(one: dict[str, Any], many: dict[str, Any]) -> None:
    """The checkpoint holds full tensors (gathered on rank 0), equal to one process's."""
    full = torch.load(Path(many["record_path"]).with_name("checkpoint") / "state.pt",
                      weights_only=False)
    ref = torch.load(Path(one["record_path"]).with_name("checkpoint") / "state.pt",
                     weights_only=False)
    assert set(full["model"]) == set(ref["model"])
    for name, value in ref["model"].items():
        assert full["model"][name].shape == value.shape
        torch.testing.assert_close(full["model"][name], value, rtol=1e-3, atol=1e-5)
    # FSDP's optimizer state is keyed by parameter name; DDP's is the plain state dict
    assert len(full["optimizer"]["state"]) == len(ref["model"])


def _ledger_is_16n_over_g(rec: dict[str, Any], nodrop: str) -> None:
    """FSDP full fine-tuning: each rank holds 16N/2 bytes of weights, grads and Adam state."""
    mem, n = rec["memory"], rec["params"]["total"]
    assert mem["predicted_formula"] == "16N/G" and mem["predicted_bytes"] == 16 * n // 2
    # FSDP pads each parameter's dim 0 to a multiple of G; every dim 0 here is even: no padding
    shapes = [p.shape for p in _model_params(nodrop)]
    padding = sum(4 * (math.ceil(s[0] / 2) * 2 - s[0]) * math.prod(s[1:]) for s in shapes)
    assert padding == 0
    for rank in mem["per_rank"]:
        assert rank["weights_bytes"] == 4 * n // 2
        assert rank["grads_bytes"] == 4 * n // 2
        assert rank["optimizer_bytes"] == 8 * n // 2
        assert rank["ledger_bytes"] == 16 * n // 2 + padding
    assert mem["ledger_bytes"] == mem["predicted_bytes"]


def _model_params(path: str) -> list[torch.Tensor]:
    from experiments.inputs.backbones import load_backbone

    model, _, _ = load_backbone(path, 2, dropout=0.0)
    return list(model.parameters())


EXPORT = """
import sys, torch
from experiments.dist import process as distributed
from experiments.dist.strategy import exit_process, of
from experiments.inputs.backbones import load_backbone
from methods import lora

info = distributed.setup(sys.argv[3], torch.device("cpu"), 2)
torch.manual_seed(0)
model, _, _ = load_backbone(sys.argv[1], 2, dropout=0.0)
lora.apply(model, lora.Config())
with torch.no_grad():
    for layer in lora.lora_layers(model).values():
        layer.lora_B.weight.normal_()  # B starts at zero: give the export something to carry
model = of(info).wrap(model)
with of(info).full_weights(model) as full:
    if info.main:
        lora.export_peft(full, sys.argv[2])
exit_process(0)
"""


@NEEDS_TWO
@pytest.mark.parametrize("strategy", ["fsdp"])
def test_lora_export_from_a_sharded_model_is_full(nodrop: str, strategy: str,
                                                  tmp_path: Path) -> None:
    from safetensors.torch import load_file

    script = tmp_path / "export.py"
    script.write_text(EXPORT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONFAULTHANDLER": "1"}
    outs = {}
    for nproc in (1, 2):  # one process: no process group, the plain export
        out = tmp_path / f"peft{nproc}"
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={nproc}", str(script), nodrop, str(out),
                              strategy], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[nproc] = load_file(str(out / "adapter_model.safetensors"))
    assert set(outs[1]) == set(outs[2]) and outs[1]
    for key, value in outs[1].items():
        assert torch.equal(outs[2][key], value), key


def test_eval_shards_cover_every_example_once_with_equal_batch_counts() -> None:
    for n, batch, world in [(33, 8, 2), (1, 4, 2), (257, 128, 2), (10, 3, 4)]:
        seen: list[int] = []
        counts = set()
        for rank in range(world):
            batches, real = eval_batches(n, batch, rank, world)
            counts.add(len(batches))
            seen += [i for b, r in zip(batches, real, strict=True) for i in b[:r]]
        assert sorted(seen) == list(range(n)) and len(counts) == 1


def test_too_many_processes_is_one_line_exit_2_nothing_written(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        runs_dir: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "999")
    monkeypatch.setenv("RANK", "0")
    assert main(["method=full", "model=tiny-bert", "train_size=16", "eval_size=8",
                 "wandb=disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: NPROC=999 processes but")
    assert not runs_dir.exists()
    # the pre-check `make experiment NPROC=` runs before torchrun says the same
    out = subprocess.run([sys.executable, "-m", "experiments.dist.launch", "999", "cpu"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: NPROC=999")
    assert len(out.stderr.strip().splitlines()) == 1


def test_batch_not_divisible_by_processes_is_a_user_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        runs_dir: Path) -> None:
    monkeypatch.setattr(launch, "capacity", lambda kind: (8, "CPU cores"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["method=full", "model=tiny-bert", "batch_size=8", "wandb=disabled"]) == 2
    assert "not divisible by 3" in capsys.readouterr().err
    assert not runs_dir.exists()


@NEEDS_TWO
def test_fsdp_checkpoint_restores_into_a_sharded_model(nodrop: str, tmp_path: Path) -> None:
    """Resuming from the gathered checkpoint scatters it back into shards: same test result."""
    args = [*_args(nodrop, "full", "keep_checkpoint=true"), "dist=fsdp"]
    first = _torchrun(args, tmp_path / "dist")
    again = _torchrun([f"resume={first['run_id']}", "progress=false", "wandb=disabled"],
                      tmp_path / "dist")
    assert again["run_id"] == first["run_id"] and again["steps"] == 5
    assert len(again["resumed"]) == 1 and again["dist"]["strategy"] == "fsdp"
    assert again["metrics"]["test/accuracy"] == first["metrics"]["test/accuracy"]


class _Exited(Exception):
    """os._exit, caught: the code it was given."""


@pytest.mark.parametrize(("world", "how"), [("1", SystemExit), ("2", _Exited)])
def test_exit_skips_the_interpreter_teardown_only_under_torchrun(
        monkeypatch: pytest.MonkeyPatch, world: str, how: type[BaseException]) -> None:
    """Under torchrun a rank leaves by os._exit (gloo threads can abort a finalizing
    interpreter); alone it exits normally. Either way the harness's exit code survives."""
    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(how) as caught:
        exit_process(2)
    code = caught.value.args[0] if how is _Exited else caught.value.code
    assert code == 2
