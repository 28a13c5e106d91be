"""Section 3: inference latency of the base model, LoRA unmerged, and LoRA merged into W."""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

import torch
from torch import nn

from bench.timing import interleaved, median_ratio, stats
from bench.workloads import Settings, real_batch
from experiments.harness.runtime import Context, pick_precision, seed_everything
from methods import lora

TOLERANCE = 0.03  # merged / base latency must stay within 3%


def models(s: Settings) -> tuple[dict[str, nn.Module], Any]:
    """base, lora unmerged (all layers, r=8, non-zero trained-like B), lora merged; tokenizer."""
    from experiments.inputs.backbones import load_backbone

    seed_everything(s.seed)
    base, tokenizer, _ = load_backbone(s.model, 2, dropout=0.0)
    adapted = copy.deepcopy(base)
    lora.apply(adapted, lora.Config(rank=8, alpha=16, targets="all"))
    with torch.no_grad():  # B starts at zero; a trained adapter's is not (merge must matter)
        for layer in lora.lora_layers(adapted).values():
            layer.lora_B.weight.normal_(std=0.02)
    merged = copy.deepcopy(adapted)
    lora.merge(merged)
    out = {"base": base, "lora unmerged": adapted, "lora merged": merged}
    for m in out.values():
        m.to(s.device).eval()
    return out, tokenizer


@torch.no_grad()
def _infer(model: nn.Module, batch: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
    with ctx.autocast():
        return model(**batch).logits


def run(s: Settings) -> dict[str, Any]:
    """Latency at batch 1 and at the benchmark batch; merged and unmerged as ratios to base."""
    print("  building base, lora unmerged, lora merged", file=sys.stderr, flush=True)
    nets, tokenizer = models(s)
    ctx = Context(s.device, pick_precision(s.precision, s.device))
    result: dict[str, Any] = {"batches": {}, "tolerance": TOLERANCE, "seq_len": s.seq_len}
    for batch_size, rounds in zip((1, s.batch_size), s.infer_rounds, strict=True):
        batch = real_batch(tokenizer, batch_size, s.seq_len)
        batch.pop("labels")
        batch = ctx.to_device(batch)
        fns = {name: functools.partial(_infer, m, batch, ctx) for name, m in nets.items()}
        for fn in fns.values():  # warm-up
            fn()
        times = interleaved(fns, rounds, s.device, desc=f"inference batch {batch_size}",
                            progress=s.progress)
        merged = median_ratio(times["lora merged"], times["base"])
        result["batches"][str(batch_size)] = {
            "latency": {name: stats(t) for name, t in times.items()},
            "merged_vs_base": merged,
            "unmerged_vs_base": median_ratio(times["lora unmerged"], times["base"]),
            "merged_ok": abs(merged - 1) <= TOLERANCE, "rounds": rounds}
    batch = real_batch(tokenizer, s.batch_size, s.seq_len)
    batch.pop("labels")
    batch = ctx.to_device(batch)
    diff = (_infer(nets["lora merged"], batch, ctx).float()
            - _infer(nets["lora unmerged"], batch, ctx).float()).abs().max()
    result["merged_max_abs_logit_diff"] = float(diff)
    result["merged_ok"] = all(b["merged_ok"] for b in result["batches"].values())
    return result
