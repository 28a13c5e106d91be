"""The memory ledger, the activation peak, the 12N optimizer, and the measured step through the
harness and `make memory` (the step tracker itself: test_memtrack.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.harness.config import Config, resolve
from experiments.harness.optim import CHUNK, Mixed12nAdamW
from experiments.memory.ledger import (
    FirstStepProbe,
    SavedTensorPeak,
    model_state,
    predict,
    unique_bytes,
)
from experiments.train import Context, build_optimizer
from methods import METHODS

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models gain nothing from intra-op threads, and on a shared, busy machine OpenMP's
    spinning threads slowed these tests ten- to a hundredfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def token_batch(batch: int = 4, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids of one fixed length (so activations depend on `batch` alone)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (batch,), generator=g)}


def first_step(model: torch.nn.Module, precision: str = "fp32",
               batch: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """One training step as the harness takes it, measured by the probe; the probe's result."""
    ctx = Context(CPU, precision)
    optimizer = build_optimizer(model, Config(lr=1e-3), precision)
    probe = FirstStepProbe(model, optimizer)
    batch = batch if batch is not None else token_batch()
    model.train()
    with probe.activations(batch):
        with ctx.autocast():
            loss = model(**batch).loss
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return probe.result()


def with_method(tiny: Any, name: str, arch: str = "tiny-bert") -> tuple[torch.nn.Module, int, int]:
    """A tiny model with a method applied: (model, N all parameters, M trainable)."""
    from methods.model import param_split

    if name not in METHODS:
        pytest.skip(f"method {name!r} is not registered yet")
    model = tiny(arch)[0]
    METHODS[name].apply(model, METHODS[name].Config())
    split = param_split(model)
    return model, split["total"], split["trainable"]


# --- the ledger against the formulas -------------------------------------------------------

@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-gpt2"])
def test_full_fp32_ledger_is_16n_exactly(tiny: Any, arch: str) -> None:
    model, n, m = with_method(tiny, "full", arch)
    mem = first_step(model, "fp32")
    assert n == m
    assert mem["weights_bytes"] == 4 * n and mem["weights_by_dtype"] == {"float32": 4 * n}
    assert mem["grads_bytes"] == 4 * n and mem["optimizer_bytes"] == 8 * n
    assert mem["trainable_state_bytes"] == 12 * n
    assert mem["ledger_bytes"] == 16 * n == predict(n, m, "fp32")[0]
    assert mem["buffers_excluded"] and mem["buffers_bytes"] == (8192 if arch == "tiny-bert" else 0)
    # AdamW's 0-dim step counters are not per-parameter state: reported apart, not in the 16N.
    assert mem["optimizer_scalar_bytes"] == 4 * len(list(model.parameters()))


def test_bf16_autocast_keeps_the_16n_layout(tiny: Any) -> None:
    model, n, _ = with_method(tiny, "full")
    mem = first_step(model, "bf16-mixed")
    assert mem["ledger_bytes"] == 16 * n
    assert mem["grads_by_dtype"] == {"float32": 4 * n}


def test_mixed_12n_ledger_is_12n_exactly(tiny: Any) -> None:
    model, n, m = with_method(tiny, "full")
    mem = first_step(model, "mixed-12n")
    assert mem["weights_by_dtype"] == {"float32": 4 * n}
    assert mem["grads_by_dtype"] == {"bfloat16": 2 * n}
    assert mem["optimizer_by_dtype"] == {"bfloat16": 2 * n, "float32": 4 * n}
    assert mem["optimizer_scalar_bytes"] == 0
    assert mem["ledger_bytes"] == 12 * n == predict(n, m, "mixed-12n")[0]


# The lecture's 4N+16M counts the weights as N+M floats: its N is the frozen part. With n
# counting every parameter once (param_split's total) that is 4(n-m)+16m, exactly.
@pytest.mark.parametrize("name", ["head", "lora", "embedding", "soft_prompt"])
def test_frozen_backbone_ledger_is_4n_plus_16m(tiny: Any, name: str) -> None:
    model, n, m = with_method(tiny, name)
    assert 0 < m < n
    mem = first_step(model, "fp32")
    assert mem["weights_bytes"] == 4 * n
    assert mem["trainable_state_bytes"] == 12 * m
    assert mem["ledger_bytes"] == 4 * (n - m) + 16 * m == predict(n, m, "fp32")[0]


def test_head_ledger_counts_only_the_head_as_trainable(tiny: Any) -> None:
    from methods.model import param_split

    model, n, m = with_method(tiny, "head")
    assert m == param_split(model)["head"] == 32 * 2 + 2
    assert first_step(model)["ledger_bytes"] == 4 * n + 12 * m


def test_predict_formulas() -> None:
    assert predict(100, 100, "fp32") == (1600, "16N", 100)
    assert predict(100, 100, "bf16-mixed") == (1600, "16N", 100)
    assert predict(100, 100, "mixed-12n") == (1200, "12N", 100)
    assert predict(100, 100, "fp32", shards=4) == (400, "16N/G", 100)
    # the lecture's N in 4N+16M is the frozen part: here 100 - 10
    assert predict(100, 10, "fp32") == (4 * 90 + 16 * 10, "4N+16M", 90)
    assert predict(100, 10, "mixed-12n") == (4 * 90 + 12 * 10, "4N+12M", 90)


def test_unique_bytes_counts_shared_storage_once() -> None:
    a = torch.zeros(10)
    b = torch.zeros(3, dtype=torch.bfloat16)
    total, by_dtype = unique_bytes([a, a, a[2:5], a.view(2, 5), b])
    assert total == 40 + 6 and by_dtype == {"float32": 40, "bfloat16": 6}


def test_parameters_sharing_one_storage_count_once() -> None:
    lin, twin = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    twin.weight = torch.nn.Parameter(lin.weight.data)  # two Parameter objects, one storage
    both = torch.nn.ModuleList([lin, twin])
    assert len(list(both.parameters())) == 2
    assert unique_bytes(both.parameters())[0] == 4 * 16


# --- activations ---------------------------------------------------------------------------

def test_activation_peak_is_linear_in_batch_size(tiny: Any) -> None:
    peaks = []
    for batch in (4, 8):
        model, _, _ = with_method(tiny, "full")
        peaks.append(first_step(model, batch=token_batch(batch))["activations_peak_bytes"])
    assert peaks[0] > 0
    assert peaks[1] / peaks[0] == pytest.approx(2.0, rel=0.05)


def test_activations_of_head_on_cached_features_are_far_smaller(tiny: Any) -> None:
    model, _, _ = with_method(tiny, "full")
    full = first_step(model, batch=token_batch(8, 32))
    head, _, _ = with_method(tiny, "head")
    feats = {"features": torch.randn(8, 32), "labels": torch.zeros(8, dtype=torch.long)}
    cached = first_step(head, batch=feats)
    assert cached["activations_peak_bytes"] * 50 < full["activations_peak_bytes"]
    assert "head's forward+backward alone" in cached["activations_scope"]
    assert "whole model" in full["activations_scope"]


def test_saved_tensor_hook_changes_neither_loss_nor_gradients(tiny: Any) -> None:
    model = tiny("tiny-bert")[0]
    twin = copy.deepcopy(model)
    batch = token_batch()
    results = []
    for m, hooked in ((model, False), (twin, True)):
        m.train()
        torch.manual_seed(1)  # same dropout masks in both
        tracker = SavedTensorPeak(model_state(m))
        with tracker if hooked else torch.enable_grad():
            loss = m(**batch).loss
            loss.backward()
        results.append((loss.detach(), [p.grad for p in m.parameters()]))
        if hooked:
            assert tracker.peak > 0 and tracker.current == 0  # all released after backward
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_parameters_are_not_counted_as_activations() -> None:
    lin = torch.nn.Linear(256, 256)  # saves its weight (256 KiB) and its input (4 KiB)
    x = torch.randn(4, 256, requires_grad=True)
    with SavedTensorPeak(model_state(lin)) as tracker:
        lin(x).sum().backward()
    assert tracker.peak == x.nbytes


# --- the 12N optimizer ---------------------------------------------------------------------

def test_mixed_12n_adamw_matches_adamw_closely() -> None:
    """Same grads each step (bf16-representable): the update follows torch's AdamW; the bf16
    momentum only rounds the stored state."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, 32))
    b = torch.nn.Parameter(a.detach().clone())
    start = a.detach().clone()
    ref = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1)
    ours = Mixed12nAdamW([b], lr=1e-2, weight_decay=0.1)
    for step in range(20):
        g = torch.randn(64, 32, generator=torch.Generator().manual_seed(step)).bfloat16()
        a.grad, b.grad = g.float(), g
        ref.step()
        ours.step()
        if step == 0:
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    moved = (a.detach() - start).abs().max()
    assert (b - a).abs().max() < 0.01 * moved
    assert ours.state[b]["exp_avg"].dtype == torch.bfloat16
    assert ours.state[b]["exp_avg_sq"].dtype == torch.float32
    again = Mixed12nAdamW([b], lr=1e-2, weight_decay=0.1)
    again.load_state_dict(ours.state_dict())  # torch would cast the momentum to fp32
    assert again.state[b]["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(again.state[b]["exp_avg"], ours.state[b]["exp_avg"])


def test_mixed_12n_trains_like_fp32_adamw(tiny: Any) -> None:
    batch = token_batch(16, 16)
    curves = {}
    for precision in ("fp32", "mixed-12n"):
        model = tiny("tiny-bert")[0]
        model.train()
        ctx = Context(CPU, precision)
        optimizer = build_optimizer(model, Config(lr=1e-3), precision)
        losses = []
        for _ in range(15):
            with ctx.autocast():
                loss = model(**batch).loss
            loss.backward()
            if precision == "mixed-12n":
                assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        curves[precision] = losses
    fp32, mixed = curves["fp32"], curves["mixed-12n"]
    assert fp32[-1] < 0.5 * fp32[0] and mixed[-1] < 0.5 * mixed[0]
    assert abs(mixed[-1] - fp32[-1]) < 0.1 + 0.2 * fp32[-1]


# --- through the harness -------------------------------------------------------------------

@pytest.fixture(scope="module")
def harness_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A few steps of full (fp32; mixed-12n; foreach AdamW) and head through `run`, with the W&B
    summary each run handed to the tracker."""
    from experiments.harness import tracking
    from experiments.train import run

    runs_dir = tmp_path_factory.mktemp("runs")
    summaries: list[dict[str, Any]] = []
    finish = tracking.Tracker.finish

    def capture(self: Any, record: dict[str, Any], summary: dict[str, Any]) -> Path:
        summaries.append(dict(summary))
        return finish(self, record, summary)

    base = ["model=tiny-bert", "train_size=64", "eval_size=16", "max_steps=2", "batch_size=16",
            "wandb=disabled", "progress=false", f"runs_dir={runs_dir}"]
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking.Tracker, "finish", capture)
        for key, extra in (("full", ["method=full", "precision=fp32"]),
                           ("full-12n", ["method=full", "precision=mixed-12n"]),
                           ("full-foreach", ["method=full", "precision=fp32",
                                             "optimizer_impl=foreach"]),
                           ("head", ["method=head", "precision=fp32"])):
            out[key] = (run(resolve([*base, *extra])), summaries[-1])
    return out


MEMORY_KEYS = ("measured_peak_bytes", "measured_at_peak", "measured_max",
               "measured_state_peak_bytes", "measured_at_state_peak", "state_vs_predicted",
               "optimizer_temporaries_at_state_peak", "measured_method", "measured_step",
               "weight_casts_bytes", "optimizer_impl", "rss_growth_bytes", "rss_method",
               "weights_bytes", "weights_by_dtype", "grads_bytes", "optimizer_bytes",
               "trainable_state_bytes", "activations_peak_bytes", "activations_method",
               "predicted_bytes", "predicted_formula", "ledger_vs_predicted", "buffers_excluded",
               "ledger_method", "N", "M")
SUMMARY_KEYS = ("memory/measured_peak_bytes", "memory/measured_state_peak_bytes",
                "memory/state_vs_predicted", "memory/predicted_bytes",
                "memory/activations_peak_bytes", "memory/weight_casts_bytes",
                "memory/weights_bytes", "memory/grads_bytes", "memory/optimizer_bytes",
                "memory/ledger_vs_predicted", "memory/rss_growth_bytes")


@pytest.mark.parametrize("key", ["full", "full-12n", "full-foreach", "head"])
def test_every_record_has_the_memory_fields(harness_runs: dict[str, Any], key: str) -> None:
    record, summary = harness_runs[key]
    mem = record["memory"]
    assert set(MEMORY_KEYS) <= set(mem)
    assert set(SUMMARY_KEYS) <= set(summary)
    assert mem["ledger_vs_predicted"] == 1.0  # the cross-check: by construction
    assert mem["measured_step"] == 1  # one training step first: the optimizer state exists
    assert mem["measured_batch"][0] == 16 and "measured_batch_rule" in mem
    assert mem["measured_peak_bytes"] == sum(mem["measured_at_peak"].values())
    assert mem["measured_state_peak_bytes"] <= mem["measured_peak_bytes"]
    assert mem["activations_peak_bytes"] == mem["measured_max"]["activations"] > 0
    assert mem["weight_casts_bytes"] == (0 if record["precision"] == "fp32" else
                                         mem["measured_max"]["weight_casts"])
    # The CPU resident set is labelled approximate and never called a peak.
    assert "approximate" in mem["rss_method"]
    assert not {"peak_bytes", "device_peak_bytes", "peak_method"} & set(mem)
    assert mem["N"] == record["params"]["total"] and mem["M"] == record["params"]["trainable"]


def test_the_formulas_hold_with_fused_adamw_and_fail_with_foreach(
        harness_runs: dict[str, Any]) -> None:
    ratio = {k: harness_runs[k][0]["memory"]["state_vs_predicted"] for k in harness_runs}
    impl = {k: harness_runs[k][0]["memory"]["optimizer_impl"] for k in harness_runs}
    assert impl == {"full": "fused", "full-12n": "loop", "full-foreach": "foreach",
                    "head": "fused"}
    assert ratio["full"] == pytest.approx(1.0, abs=0.001)
    assert ratio["head"] == pytest.approx(1.0, abs=0.001)
    assert ratio["full-foreach"] > ratio["full"] + 0.2  # sqrt(exp_avg_sq): 4N more, 20N
    # The 12N update's fp32 temporaries: gradient, momentum and denominator of one chunk.
    mem = harness_runs["full-12n"][0]["memory"]
    temporaries = mem["measured_at_state_peak"]["optimizer_temporaries"]
    assert mem["measured_state_peak_bytes"] == mem["predicted_bytes"] + temporaries
    assert 0 < temporaries <= 3 * 4 * CHUNK


def test_harness_wires_the_precision(harness_runs: dict[str, Any]) -> None:
    full, full12 = harness_runs["full"][0]["memory"], harness_runs["full-12n"][0]["memory"]
    assert full["predicted_formula"] == "16N" and full12["predicted_formula"] == "12N"
    assert full12["grads_by_dtype"] == {"bfloat16": full12["N"] * 2}
    assert harness_runs["full-12n"][0]["status"] == "finished"
    head = harness_runs["head"][0]["memory"]
    assert head["predicted_formula"] == "4N+16M"
    assert head["formula_N"] == head["N"] - head["M"]
    assert "cached features" in head["activations_scope"]
    assert head["activations_peak_bytes"] * 50 < full["activations_peak_bytes"]


def test_memory_table_rows_csv_notes_and_figure(harness_runs: dict[str, Any],
                                               tmp_path: Path) -> None:
    from experiments.tools.memory_table import (
        CSV_FIELDS,
        format_table,
        notes,
        plot_breakdown,
        row,
        run_list,
        write_csv,
    )

    rows = [row(harness_runs[k][0]) for k in ("full", "full-12n", "full-foreach", "head")]
    text = format_table(rows)
    assert "12N" in text and "mixed-12n" in text and "foreach" in text and "4N+16M" in text
    write_csv(rows, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_FIELDS) == (
        "method,optimizer_impl,precision,formula,predicted_bytes,measured_state_peak_bytes,"
        "state_vs_predicted,activations_peak_bytes,measured_peak_bytes")
    assert len(lines) == 5 and lines[1].startswith("full,fused,fp32,16N,")
    explained = notes(rows)
    assert "full foreach fp32: 1.2" in explained and "_foreach_sqrt" in explained
    assert "full fused fp32" not in explained and "head fused" not in explained
    paths = plot_breakdown(rows, tmp_path / "reports")
    assert [p.name for p in paths] == ["memory_breakdown.png", "memory_breakdown.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    labels = [label for label, _ in run_list()]
    for must in ("head", "embedding", "soft_prompt", "lora (attention)", "lora (mlp)",
                 "lora (all)", "full"):
        assert must in labels
    args = [tuple(extra) for _, extra in run_list()]
    assert ("method=full", "precision=fp32", "optimizer_impl=foreach") in args
    assert ("method=full", "precision=mixed-12n") in args
    assert ("method=lora", "lora.targets=all", "optimizer_impl=foreach") in args
    assert {a[0].removeprefix("method=") for a in args} == set(METHODS)  # the registry drives


def test_make_memory_entry_point_runs_each_method_in_its_own_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from experiments.tools import memory_table

    monkeypatch.setattr(memory_table, "run_list", lambda: [("head", ["method=head"])])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child process: see _one_thread
    out = tmp_path / "table.csv"
    assert memory_table.main(["model=tiny-bert", "train_size=32", "eval_size=8",
                              "--out", str(out), "--reports", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "4N+16M" in printed and " 1.000 " in printed
    assert out.read_text().splitlines()[1].startswith("head,fused,fp32,4N+16M,")
    assert (tmp_path / "rep" / "memory_breakdown.svg").exists()
    assert memory_table.main(["model=tiny-bert", "no_such_key=1", "--out", str(out)]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "mixed-12n"])
def test_cuda_step_is_measured_both_ways(tmp_path: Path, precision: str) -> None:
    """On CUDA the allocator's maximum over the measured step sits beside the tracker's peak:
    at least as large (it rounds blocks up and sees kernels' scratch), not far above."""
    from experiments.train import run

    record = run(resolve(["method=full", "model=tiny-bert", "train_size=64", "eval_size=16",
                          "max_steps=3", "batch_size=16", "device=cuda", f"precision={precision}",
                          "wandb=disabled", "progress=false", f"runs_dir={tmp_path}"]))
    mem = record["memory"]
    assert mem["ledger_vs_predicted"] == 1.0
    assert mem["weight_casts_bytes"] > 0  # autocast's bf16 copies, apart from activations
    assert mem["cuda_max_allocated_bytes"] >= 0.99 * mem["measured_peak_bytes"]
    assert mem["cuda_vs_measured"] == mem["cuda_max_allocated_bytes"] / mem["measured_peak_bytes"]
    # What else the allocator holds: cuBLAS workspaces, blocks rounded up to 512 bytes.
    assert mem["cuda_max_allocated_bytes"] - mem["measured_peak_bytes"] < 128 * 2**20
    assert mem["cuda_run_max_allocated_bytes"] >= mem["cuda_max_allocated_bytes"]
    assert mem["optimizer_impl"] == ("fused" if precision == "bf16-mixed" else "loop")
    assert mem["state_vs_predicted"] == pytest.approx(1.0, abs=0.03 if precision == "bf16-mixed"
                                                      else 0.5)
