"""`python -m bench --smoke`: the whole script on a tiny model, so it cannot rot; bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import cli

LABELS = ["head (cached features)", "head (uncached)", "embedding", "soft_prompt (20 tokens)",
          "lora attention r=8", "lora mlp r=8", "lora all r=8", "dora all r=8", "full",
          "full mixed-12n"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One smoke run of every section (about 10 s), shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_smoke_writes_json_markdown_and_figures(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, res = smoke
    assert res["smoke"] is True and res["settings"]["model"] == "tiny-bert"
    assert list(res["sections"]) == ["methods", "peft", "inference", "scaling", "levers",
                                     "profile"]
    assert res["machine"]["torch"] and res["machine"]["cores"] >= 1
    md = (out / "BENCHMARKS.md").read_text()
    for heading in ("## 1. Cost", "## 2. Our LoRA against PEFT", "## 3. Inference",
                    "## 4. Scaling", "## 5. What made the default run faster",
                    "## 6. Where a default LoRA step spends its time", "**Smoke run**"):
        assert heading in md
    for name in ("bench_rank", "bench_seq"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000
        assert f"]({name}.png)" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_method_rows_are_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    rows = {r["label"]: r for r in smoke[1]["sections"]["methods"]["rows"]}
    assert list(rows) == LABELS
    for r in rows.values():
        assert r["step"]["n"] == 3 and 0 < r["step"]["p25_ms"] <= r["step"]["median_ms"]
        assert r["ledger_bytes"] > 0 and r["flops_per_step"] > 0
    # The ledger is exact: full fp32 is 16N, mixed-12n 12N, adapters 4N+16M.
    for label in ("full", "full mixed-12n", "lora all r=8", "embedding"):
        assert rows[label]["ledger_vs_predicted"] == pytest.approx(1.0, abs=1e-9)
    assert rows["full"]["step_vs_full"] == 1.0 and rows["full"]["ledger_vs_full"] == 1.0
    assert rows["full mixed-12n"]["ledger_bytes"] == rows["full"]["ledger_bytes"] * 3 // 4
    # The cached head never runs the backbone in a step; the uncached one does.
    assert rows["head (cached features)"]["tokens_per_step"] == 0
    assert rows["head (uncached)"]["tokens_per_step"] == 4 * 16
    assert rows["soft_prompt (20 tokens)"]["tokens_per_step"] == 4 * (16 + 20)
    assert rows["full"]["mfu"] is None  # no peak for a CPU


def test_peft_section_compares_like_with_like(smoke: tuple[Path, dict[str, Any]]) -> None:
    sec = smoke[1]["sections"]["peft"]
    rows = sec["rows"]
    assert rows["ours"]["params_trainable"] == rows["peft"]["params_trainable"]
    # Same parameters, same optimizer: the ledgers are equal to the byte.
    assert sec["ratios"]["ledger_bytes"] == 1.0 and sec["ledger_ok"]
    assert all(len(v) == 3 for v in sec["times_s"]["step"].values())
    assert 0 < sec["ratios"]["step"] < 10 and 0 < sec["ratios"]["forward"] < 10


def test_levers_are_real_runs_set_against_the_plain_one(
        smoke: tuple[Path, dict[str, Any]]) -> None:
    """Each lever row ran the harness with its own overrides; ratios are to the plain run."""
    sec = smoke[1]["sections"]["levers"]
    rows = {r["lever"]: r for r in sec["rows"]}
    plain = sec["rows"][0]
    assert plain["step_vs_plain"] == 1.0 and "precision=fp32" in plain["overrides"]
    assert "group_by_length=0" in plain["overrides"]
    default = rows["default (all levers)"]
    assert {"precision=bf16-mixed", "group_by_length=50", "optimizer_impl=fused"} <= set(
        default["overrides"])
    for r in sec["rows"]:
        assert r["step_s"] > 0 and r["wall_s"] > r["step_s"]
        assert r["wall_vs_plain"] == pytest.approx(r["wall_s"] / plain["wall_s"])
        samples = sec["samples"][r["lever"]]
        assert len(samples) == sec["rounds"] and all(x["steps"] == 3 for x in samples)


def test_profile_splits_a_real_step_by_kind(smoke: tuple[Path, dict[str, Any]]) -> None:
    """The profiled step's time is split by kind of op, each op counted once: the kinds add up
    to the step's wall time (counting children's time too would overshoot it), and a
    transformer step spends some of it in matrix multiplies."""
    out, res = smoke
    sec = res["sections"]["profile"]
    kinds = {k["kind"]: k for k in sec["kinds"]}
    assert kinds["matrix multiplies"]["ms_per_step"] > 0
    assert sum(k["share"] for k in sec["kinds"]) == pytest.approx(1.0, abs=0.02)
    assert sec["steps"] == 2 and sec["top_ops"][0]["ms_per_step"] > 0
    assert "## 6. Where a default LoRA step spends its time" in (
        out / "BENCHMARKS.md").read_text()


def test_ops_are_sorted_into_the_kinds_that_matter() -> None:
    from bench.profile import OTHER, kind_of

    assert kind_of("aten::addmm") == kind_of("aten::bmm") == "matrix multiplies"
    assert kind_of("aten::bernoulli_") == "random numbers for dropout"
    assert kind_of("aten::_to_copy") == "copies and dtype casts"
    assert kind_of("aten::_fused_adamw_") == kind_of("aten::_foreach_mul_") == "optimizer update"
    assert kind_of("aten::gelu_backward") == OTHER


def test_inference_and_scaling_sections(smoke: tuple[Path, dict[str, Any]]) -> None:
    inf = smoke[1]["sections"]["inference"]
    assert set(inf["batches"]) == {"1", "4"}
    assert inf["merged_max_abs_logit_diff"] < 1e-4  # merging keeps the function
    sc = smoke[1]["sections"]["scaling"]
    ranks = sc["ranks"]["rows"]
    assert [r["rank"] for r in ranks] == [1, 4]
    assert ranks[1]["params_trainable"] > ranks[0]["params_trainable"]
    seqs = sc["sequences"]["rows"]
    assert [(r["seq"], r["method"]) for r in seqs] == [
        (16, "lora"), (16, "full"), (32, "lora"), (32, "full")]
    full = [r for r in seqs if r["method"] == "full"]
    assert full[1]["activations_peak_bytes"] > full[0]["activations_peak_bytes"]
    assert full[1]["optimizer_bytes"] == full[0]["optimizer_bytes"]
    assert set(sc["sequences"]["activations_overtake_optimizer"]) == {"lora", "full"}


@pytest.mark.parametrize("argv, message", [
    (["--only", "nope"], "choose from methods, peft, inference, scaling, levers"),
    (["--frobnicate"], "unknown option --frobnicate"),
    (["--rounds", "1"], "must be an integer >= 2"),
    (["--rounds"], "--rounds needs a value"),
    (["--device", "cuda:7"], "device=cuda:7"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv: list[str], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("cuda:7 may exist here")
    out = tmp_path / "out"
    assert cli.main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_from_json_renders_the_same_page_without_running(
        smoke: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = smoke
    assert cli.main(["--from-json", str(out / "bench.json"), "--out", str(tmp_path)]) == 0

    def body(p: Path) -> list[str]:
        return [line for line in p.read_text().splitlines() if not line.startswith("Raw samples")]
    assert body(tmp_path / "BENCHMARKS.md") == body(out / "BENCHMARKS.md")
    assert (tmp_path / "bench_seq.svg").exists() and not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("content, message", [
    ("not json", "not readable JSON"), ('{"schema": 2}', "not a bench.json")])
def test_from_json_rejects_what_is_not_a_result(content: str, message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text(content)
    assert cli.main(["--from-json", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_a_failing_section_is_one_line_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench import inference

    def broken(_s: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(inference, "run", broken)
    monkeypatch.delenv("BENCH_DEBUG", raising=False)
    out = tmp_path / "out"
    assert cli.main(["--smoke", "--only", "inference", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the benchmark failed (RuntimeError: out of memory)")
    assert not out.exists()
