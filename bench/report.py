"""BENCHMARKS.md, the scaling figures and the one-paragraph verdict, from the results dict."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from analysis.style import human_bytes, human_count
from bench.workloads import Settings
from experiments.contract import record as R
from experiments.contract.io import atomic_write_text


def settings_dict(s: Settings) -> dict[str, Any]:
    """The settings as JSON-able values."""
    out = dataclasses.asdict(s)
    out["device"] = str(s.device)
    return out


def _ms(stat: dict[str, float]) -> str:
    return f"{stat['median_ms']:.1f} [{stat['p25_ms']:.1f}–{stat['p75_ms']:.1f}]"


def _x(v: float | None, digits: int = 2) -> str:
    """A number to `digits` decimals; a dash when missing."""
    return "—" if v is None else f"{v:.{digits}f}"


def _ratio(v: float) -> str:
    """A ratio to two decimals, or to two significant digits when it is small."""
    return f"{v:.2f}" if v >= 0.1 or v == 0 else f"{v:.2g}"


def _gflop(flops: float) -> str:
    """FLOPs in GFLOP: two decimals, or two significant digits below 1."""
    g = flops / 1e9
    return f"{g:,.2f}" if g >= 1 or g == 0 else f"{g:.2g}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def _header(res: dict[str, Any]) -> list[str]:
    m, s = res["machine"], res["settings"]
    threads = m.get("cpu_threads", m.get("torch_threads"))  # bench.json before 2026-11-30
    hw = f"{m['cpu']}, {m['cores']} cores (torch threads {threads}), " \
         f"{m['memory_gib']} GiB RAM"
    if m.get("gpu"):
        hw += f"; GPU {m['gpu']}"
    commit = (m.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)"
                                                      if m.get("git_dirty") else "")
    minutes, seconds = divmod(int(res["wall_s"]), 60)
    out = ["# Benchmarks", "",
           "What each fine-tuning method costs per training step, our LoRA against PEFT's, "
           "inference with a merged adapter, and how the cost scales with LoRA rank and sequence "
           "length. `make bench` (`python -m bench`) measured every number below and writes this "
           "file, `bench.json` (every sample) and the figures.", ""]
    if res.get("smoke"):
        out += ["**Smoke run** (a tiny random model, a few steps): checks that the script "
                "works; the numbers mean nothing.", ""]
    out += [f"- **Command:** `{res['command']}` — {minutes} min {seconds} s in all",
            f"- **Machine:** {hw}; device `{m['device']}`",
            f"- **Versions:** Python {m['python']}, torch {m['torch']}, transformers "
            f"{m['transformers']}, peft {m['peft']}; {m['platform']}",
            f"- **Code:** commit {commit}, measured {res['started_at']}",
            f"- **Workload:** model `{s['model']}`, a fixed batch of {s['batch_size']} real "
            f"Rotten Tomatoes training texts padded to {s['seq_len']} tokens, "
            f"{s['precision']}; each method with its own preset learning rate and the harness's "
            "AdamW, clipping and step code", ""]
    return out


def _methods(sec: dict[str, Any], cuda: bool) -> list[str]:
    head = ["method", "precision", "trainable", "step ms, median [IQR]", "× full",
            "ledger", "× full", "activations", "tokens/s", "GFLOP/step", "× full", "GFLOP/s"]
    if cuda:
        head += ["MFU", "device peak"]
    full_flops = next(r["flops_per_step"] for r in sec["rows"] if r["label"] == sec["baseline"])
    rows = []
    for r in sec["rows"]:
        row = [r["label"], r["precision"], human_count(r["params_trainable"]), _ms(r["step"]),
               _ratio(r["step_vs_full"]), human_bytes(r[R.LEDGER_BYTES]),
               _ratio(r["ledger_vs_full"]),
               human_bytes(r[R.ACTIVATIONS_PEAK_BYTES]), f"{r['tokens_per_s']:,.0f}",
               _gflop(r["flops_per_step"]), _ratio(r["flops_per_step"] / full_flops),
               f"{r['flops_per_s'] / 1e9:,.1f}"]
        if cuda:
            row += [f"{100 * r['mfu']:.1f}%" if r["mfu"] else "—",
                    human_bytes(r[R.DEVICE_PEAK_BYTES])]
        rows.append(row)
    cached = next((r for r in sec["rows"] if r["info"].get("path") == "cached_features"), None)
    out = ["## 1. Cost of a training step, per method", "",
           f"Median of {sec['rounds']} timed steps per method after warm-up, the methods "
           "interleaved (each round runs every method once, the order rotating), so drift of the "
           "machine hits all alike; × full is the median over rounds of the method's step time "
           "over full fine-tuning's in the same round.", ""]
    out += _table(head, rows) + [""]
    full = next(r for r in sec["rows"] if r["label"] == sec["baseline"])
    notes = ["**ledger**: weights + gradients + optimizer state after the first step, each "
             "storage counted once (`experiments.memory.ledger`, as in every run record); "
             "**activations**: peak bytes autograd saved for backward in that step.",
             "**GFLOP/step**: floating-point operations (2 per multiply-add) of the step's "
             "matrix products and attention, forward and backward, counted by "
             "`torch.utils.flop_counter` as they ran: frozen layers cost their forward and "
             "input gradient only (the honest count for adapters); full fine-tuning counts "
             f"{full['flops_per_step'] / full['flops_6nt']:.2f}× the usual 6·N·T (N "
             "non-embedding parameters, T tokens; attention scores make most of the "
             "difference)."]
    if cached:
        notes.append(f"**head (cached features)**: the step trains the head on features the "
                     f"frozen backbone computed once per example before training "
                     f"({cached['info'].get('features_s', 0) * 1e3:.0f} ms for these "
                     f"{cached['examples_per_step']} examples, not in the step time); "
                     "tokens/s counts backbone tokens, none per step.")
    if cuda:
        notes.append("**MFU**: counted FLOP/s over the GPU's dense bf16 peak; **device peak**: "
                     "`torch.cuda.max_memory_allocated` over the workload's build and warm-up.")
    return out + [f"- {n}" for n in notes] + [""]


def _peft(sec: dict[str, Any]) -> list[str]:
    rows, rat, t = sec["rows"], sec["ratios"], sec["target"]
    ours, peft, book = rows["ours"], rows["peft"], rows["ours, textbook add"]
    table = [
        ["training step (ms)", _ms(ours["step"]), _ms(peft["step"]), _x(rat["step"]),
         f"≤ {t:.2f}: {_ok(sec['step_ok'])}"],
        ["step, ours with the textbook add (ms)", _ms(book["step"]), "",
         _x(rat["textbook_step"]), "ablation"],
        ["forward, training mode (ms)", _ms(ours["forward"]), _ms(peft["forward"]),
         _x(rat["forward"]), ""],
        ["ledger", human_bytes(ours[R.LEDGER_BYTES]), human_bytes(peft[R.LEDGER_BYTES]),
         _x(rat[R.LEDGER_BYTES], 3), f"≤ {t:.2f}: {_ok(sec['ledger_ok'])}"],
        ["saved activations", human_bytes(ours[R.ACTIVATIONS_PEAK_BYTES]),
         human_bytes(peft[R.ACTIVATIONS_PEAK_BYTES]), _x(rat["activations_bytes"], 3), ""],
        ["trainable parameters", f"{ours['params_trainable']:,}",
         f"{peft['params_trainable']:,}", "1.00", ""],
    ]
    faster = 1 - rat["step"]
    book_vs_ours = rat["textbook_step"] / rat["step"]
    return ["## 2. Our LoRA against PEFT's", "",
            f"Both on every linear layer of the blocks ({', '.join(sec['options'])}), the same "
            f"batch, optimizer and process; {sec['rounds']} rounds, each timing ours, PEFT's "
            f"(peft {peft['info'].get('peft')}) and an ablation once, the order rotating. A ratio "
            "is the median over rounds of ours / PEFT's in the same round.", ""] + _table(
        ["", "ours", "PEFT", "ours / PEFT", "target"], table) + [
        "",
        f"**What made the difference.** Both compute `W x + b + s·B(A x)` with the same "
        f"parameters. PEFT, like the textbook form, materialises `B(A x)` and `s·B(A x)` as "
        f"(tokens × out) tensors and adds them to the base output; ours adds the update inside "
        f"one GEMM, `addmm(out, A x, Bᵀ, alpha=s)`, and its backward makes no such temporaries "
        f"either. Our layer switched back to the textbook add (same code otherwise) runs at "
        f"{_x(rat['textbook_step'])}× PEFT's step time, so the fused add accounts for "
        f"{100 * (book_vs_ours - 1):.0f}% of our step (ours is {100 * faster:.0f}% faster than "
        f"PEFT's). It changes time, not memory: the ablation saves "
        f"{_x(rat['textbook_activations_bytes'], 3)}× PEFT's activations, as ours does, since "
        f"a scaling or an add saves nothing for backward.", ""]


def _inference(sec: dict[str, Any]) -> list[str]:
    rows = []
    for b, r in sec["batches"].items():
        lat = r["latency"]
        rows.append([b, _ms(lat["base"]), _ms(lat["lora merged"]), _x(r["merged_vs_base"], 3),
                     _ms(lat["lora unmerged"]), _x(r["unmerged_vs_base"], 3), str(r["rounds"])])
    tol = sec["tolerance"]
    return ["## 3. Inference: a merged adapter costs what the base model costs", "",
            f"Forward latency (no grad, eval mode, {sec['seq_len']} tokens) of the base model, "
            "LoRA on every layer (r=8) unmerged, and the same adapter merged into W "
            "(`methods.lora.merge`); medians over interleaved rounds, ratios the median of "
            "same-round ratios.", ""] + _table(
        ["batch", "base ms", "merged ms", "merged / base", "unmerged ms", "unmerged / base",
         "rounds"], rows) + [
        "", f"Merged within {100 * tol:.0f}% of the base model at every batch: "
        f"{_ok(sec['merged_ok'])}. Merged and unmerged logits differ by at most "
        f"{sec['merged_max_abs_logit_diff']:.1e} (float rounding of W + s·BA).", ""]


def _scaling(sec: dict[str, Any], figures: dict[str, str]) -> list[str]:
    rk, sq = sec["ranks"], sec["sequences"]
    out = ["## 4. Scaling", "", "### LoRA rank (every layer of the blocks)", ""]
    if "rank" in figures:
        out += [f"![step time and memory against LoRA rank]({figures['rank']})", ""]
    out += _table(["rank", "trainable", "step ms", "× r=1", "ledger", "activations"],
                  [[str(r["rank"]), human_count(r["params_trainable"]), _ms(r["step"]),
                    _x(r["step"]["median_ms"] / rk["rows"][0]["step"]["median_ms"]),
                    human_bytes(r[R.LEDGER_BYTES]), human_bytes(r[R.ACTIVATIONS_PEAK_BYTES])]
                   for r in rk["rows"]])
    out += ["", "### Sequence length (lora all r=8, and full)", ""]
    if "seq" in figures:
        out += [f"![step time and memory against sequence length]({figures['seq']})", ""]
    out += _table(["tokens", "method", "step ms", "× full", "optimizer state", "activations",
                   "ledger"],
                  [[str(r["seq"]), r["method"], _ms(r["step"]), _x(r.get("step_vs_full")),
                    human_bytes(r[R.OPTIMIZER_BYTES]),
                    human_bytes(r[R.ACTIVATIONS_PEAK_BYTES]), human_bytes(r[R.LEDGER_BYTES])]
                   for r in sq["rows"]])
    def where(cross: dict[str, Any]) -> str:
        return "; ".join(f"{m}: " + (f"at ≈ {c['seq']:.0f} tokens ({c['where']})" if c["seq"]
                                     else c["where"]) for m, c in cross.items())

    out += ["", f"At batch {sq['rows'][0]['examples_per_step']}, saved activations overtake the "
            f"optimizer state — {where(sq['activations_overtake_optimizer'])} — and the whole "
            f"ledger (weights + gradients + optimizer state) — "
            f"{where(sq['activations_overtake_ledger'])}. Timed over {sq['rounds']} interleaved "
            f"rounds per point (rank: {rk['rounds']}).", "",
            "LoRA skips only the weight gradients and optimizer update of the linear layers; "
            "attention, quadratic in the length, costs both methods the same, so their step "
            "times converge as sequences grow. Steps of several seconds are noisy here (see the "
            "IQR), so a ratio near 1 at the longest sequences is not a difference.", ""]
    return out


HOW = [
    "## How it is measured", "",
    "- Every step is the harness's own: `experiments.train.build_optimizer`, `forward_backward`"
    " and `apply_update` on a model the method's `apply` prepared (the head's feature cache goes"
    " through its `prepare_data` hook), so the numbers are what `make experiment` pays per step,"
    " minus data loading.",
    "- Timers synchronise the device before and after each step; the first warm-up step measures"
    " the ledger and saved activations (`experiments.memory.ledger.FirstStepProbe`), the"
    " second counts FLOPs, the rest are untimed.",
    "- On CUDA the same script runs every method in bf16-mixed (autocast), reports MFU against"
    " the GPU's dense bf16 peak and the device peak from `torch.cuda`; on CPU there is no MFU.",
    "- Speed numbers on a shared 2-core machine move by a few percent between runs; the ratios,"
    " taken within a round, move less than the medians.", ""]


def _levers(sec: dict[str, Any]) -> list[str]:
    out = ["## 5. What made the default run faster", "",
           f"Short real runs of the harness (LoRA, `{' '.join(sec['sizes'])}`), medians of "
           f"{sec['rounds']} rotated rounds: each lever alone on the plain run, then all of them "
           "(the default). Step time is training time per step (batching shows only there); "
           "end to end is the run's whole wall time.", ""]
    out += _table(["run", "step s", "step × plain", "end to end s", "end to end × plain",
                   "test acc"],
                  [[r["lever"], f"{r['step_s']:.3f}", _x(r["step_vs_plain"]),
                    f"{r['wall_s']:.1f}", _x(r["wall_vs_plain"]), f"{r['accuracy']:.3f}"]
                   for r in sec["rows"]])
    return [*out, ""]


def _profile(sec: dict[str, Any]) -> list[str]:
    batch = " × ".join(str(n) for n in sec["batch"])
    clock = ("the device's own time per op" if sec["clock"] == "device" else
             "each op's own CPU time; what no op accounts for is the step's wall time less their "
             "sum")
    out = ["## 6. Where a default LoRA step spends its time", "",
           f"`torch.profiler` over {sec['steps']} of the harness's training steps of LoRA at its "
           f"preset on the fixed batch ({batch} tokens), {sec['precision']} (what `precision=auto` "
           f"picks here); {clock}. Step wall time under the profiler: "
           f"{sec['step_wall_ms']:.1f} ms.", ""]
    out += _table(["kind of op", "ms per step", "share"],
                  [[k["kind"], f"{k['ms_per_step']:.1f}", f"{k['share']:.0%}"]
                   for k in sec["kinds"]])
    out += ["", "The largest ops:", ""]
    out += _table(["op", "kind", "ms per step", "calls per step"],
                  [[f"`{o['op']}`", o["kind"], f"{o['ms_per_step']:.1f}",
                    f"{o['calls_per_step']:g}"] for o in sec["top_ops"]])
    return [*out, ""]


def write_markdown(res: dict[str, Any], path: Path, figures: list[Path],
                   json_path: Path) -> None:
    """Write BENCHMARKS.md atomically (a reader never sees half a file)."""
    rel = {p.stem.removeprefix("bench_"): os.path.relpath(p, path.parent) for p in figures
           if p.suffix == ".png"}
    secs = res["sections"]
    cuda = res["machine"].get("gpu") is not None
    lines = _header(res)
    if "methods" in secs:
        lines += _methods(secs["methods"], cuda)
    if "peft" in secs:
        lines += _peft(secs["peft"])
    if "inference" in secs:
        lines += _inference(secs["inference"])
    if "scaling" in secs:
        lines += _scaling(secs["scaling"], rel)
    if "levers" in secs:
        lines += _levers(secs["levers"])
    if "profile" in secs:
        lines += _profile(secs["profile"])
    lines += HOW + [f"Raw samples: `{os.path.relpath(json_path, path.parent)}`.", ""]
    atomic_write_text(path, "\n".join(lines) + _kept_section(path))


def _kept_section(path: Path) -> str:
    """The tuning-cost section `python -m experiments.tools.tune --cost` keeps in this file:
    it comes from the tuner's studies, not from a bench run, so a bench run carries it over."""
    text = path.read_text() if path.is_file() else ""
    start = text.find(TUNING_HEADING)
    return "\n" + text[start:].rstrip("\n") + "\n" if start >= 0 else ""


TUNING_HEADING = "## Tuning cost"


def figures(res: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench_rank and bench_seq (PNG + SVG) when the scaling section ran."""
    sec = res["sections"].get("scaling")
    if not sec:
        return []
    return _rank_figure(sec["ranks"], out_dir) + _seq_figure(sec["sequences"], out_dir)


def _rank_figure(sec: dict[str, Any], out_dir: Path) -> list[Path]:
    from analysis.style import bytes_axis, method_color, new_figure, paper_style, save_figure

    @paper_style
    def draw() -> list[Path]:
        rows = sec["rows"]
        ranks = [r["rank"] for r in rows]
        fig, (ax_t, ax_m) = new_figure(9.0, 3.4, ncols=2)
        color = method_color("lora")
        ax_t.errorbar(ranks, [r["step"]["median_ms"] for r in rows],
                      yerr=[[r["step"]["median_ms"] - r["step"]["p25_ms"] for r in rows],
                            [r["step"]["p75_ms"] - r["step"]["median_ms"] for r in rows]],
                      marker="o", color=color, capsize=3)
        ax_t.set(xscale="log", xlabel="LoRA rank r", ylabel="training step (ms)",
                 title="Step time (median, IQR)")
        ax_t.set_ylim(bottom=0)
        ax_m.plot(ranks, [r[R.LEDGER_BYTES] for r in rows], marker="o", color=color,
                  label="ledger (weights + grads + Adam)")
        ax_m.plot(ranks, [r[R.ACTIVATIONS_PEAK_BYTES] for r in rows], marker="s",
                  color=color, linestyle="--", label="saved activations")
        ax_m.set(xscale="log", xlabel="LoRA rank r", title="Memory")
        ax_m.set_ylim(bottom=0)
        bytes_axis(ax_m.yaxis)
        ax_m.legend(frameon=False)
        for ax in (ax_t, ax_m):
            ax.set_xticks(ranks, [str(r) for r in ranks])
            ax.minorticks_off()
        return save_figure(fig, out_dir, "bench_rank")

    return draw()


def _seq_figure(sec: dict[str, Any], out_dir: Path) -> list[Path]:
    from analysis.style import bytes_axis, method_color, new_figure, paper_style, save_figure

    @paper_style
    def draw() -> list[Path]:
        fig, (ax_t, ax_m) = new_figure(9.0, 3.4, ncols=2)
        # LoRA's and full's activations nearly coincide: distinct markers keep both visible.
        for method, marker in zip(dict.fromkeys(r["method"] for r in sec["rows"]), "so",
                                  strict=False):
            rows = [r for r in sec["rows"] if r["method"] == method]
            seqs = [r["seq"] for r in rows]
            color = method_color(method)
            ax_t.plot(seqs, [r["step"]["median_ms"] for r in rows], marker=marker, color=color,
                      label=method, fillstyle="none" if marker == "o" else "full")
            ax_m.plot(seqs, [r[R.ACTIVATIONS_PEAK_BYTES] for r in rows], marker=marker,
                      color=color, label=f"{method}: saved activations",
                      fillstyle="none" if marker == "o" else "full")
            ax_m.plot(seqs, [r[R.OPTIMIZER_BYTES] for r in rows], color=color, linestyle="--",
                      label=f"{method}: optimizer state")
            cross = sec["activations_overtake_optimizer"][method]
            if cross["seq"]:
                y = rows[0][R.OPTIMIZER_BYTES]
                ax_m.plot([cross["seq"]], [y], marker="X", markersize=9, color=color,
                          linestyle="none")
                ax_m.annotate(f"≈{cross['seq']:.0f}", (cross["seq"], y),
                              textcoords="offset points", xytext=(6, -12), color=color)
        for ax in (ax_t, ax_m):
            ax.set_xscale("log", base=2)
            seqs = sorted({r["seq"] for r in sec["rows"]})
            ax.set_xticks(seqs, [str(v) for v in seqs])
            ax.minorticks_off()
            ax.set_xlabel("sequence length (tokens)")
        ax_t.set(ylabel="training step (ms)", title="Step time (median)")
        ax_t.set_ylim(bottom=0)
        ax_t.legend(frameon=False)
        ax_m.set(title="Activations overtake the optimizer state at ×")
        ax_m.set_yscale("log")
        bytes_axis(ax_m.yaxis, log=True)
        ax_m.legend(frameon=False, fontsize=8)
        return save_figure(fig, out_dir, "bench_seq")

    return draw()


def verdicts(res: dict[str, Any]) -> str:
    """The few lines printed at the end: targets met or missed."""
    secs, lines = res["sections"], []
    if "methods" in secs:
        rows = secs["methods"]["rows"]
        lines.append("step time × full: " + ", ".join(
            f"{r['label']} {r['step_vs_full']:.2f}" for r in rows))
    if "peft" in secs:
        p = secs["peft"]
        lines.append(f"ours/PEFT: step {p['ratios']['step']:.3f} ({_ok(p['step_ok'])}), "
                     f"forward {p['ratios']['forward']:.3f}, ledger "
                     f"{p['ratios'][R.LEDGER_BYTES]:.3f} ({_ok(p['ledger_ok'])})")
    if "inference" in secs:
        i = secs["inference"]
        lines.append("merged/base latency: " + ", ".join(
            f"batch {b} {r['merged_vs_base']:.3f}" for b, r in i["batches"].items())
            + f" ({_ok(i['merged_ok'])} ±{100 * i['tolerance']:.0f}%)")
    return "\n".join(lines).replace("**", "")
