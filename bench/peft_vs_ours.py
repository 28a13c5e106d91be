"""Section 2: our LoRA against PEFT's on the same model, targets, rank, batch and optimizer.

A third contestant is our layer computing the update the textbook way, `out + B(A x) * s` (what
PEFT does, and what ours did before it fused the add into one GEMM): the ablation that shows what
the fused `addmm` buys.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from bench.timing import interleaved, median_ratio, stats
from bench.workloads import Settings, build, param_counts
from experiments.contract import record as R
from experiments.harness.config import Config, UserError
from methods import lora

OPTIONS = ["lora.targets=all", "lora.rank=8", "lora.alpha=16"]
TARGET = 1.00  # ours / PEFT, for step time and ledger bytes


class TextbookLoRALinear(lora.LoRALinear):
    """Our LoRA layer with the update added in three passes: `out + B(A x) * s`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the separately computed, separately scaled update."""
        out = self.base_forward(x)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def textbook(model: nn.Module, cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """Our `apply`, then every LoRA layer switched to the textbook forward (same parameters)."""
    info = lora.apply(model, cfg.method_cfg)
    for layer in lora.lora_layers(model).values():
        layer.__class__ = TextbookLoRALinear
    return model, info


def peft_lora(model: nn.Module, cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """PEFT's LoRA on the layers ours targets, with the same rank, alpha and dropout; the
    classifier head trains in both (set trainable, not copied by `modules_to_save`)."""
    try:
        import peft
    except ImportError as exc:
        raise UserError("the PEFT comparison needs peft (a dev dependency): run `make setup`, "
                        "or leave it out with --only methods,inference,scaling") from exc
    o = cfg.method_cfg
    names = lora.select_targets(model, o.targets)
    config = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout,
                             target_modules=names)
    wrapped = peft.get_peft_model(model, config)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    return wrapped, {"trains": f"PEFT LoRA adapters on {len(names)} layers + classifier head",
                     "peft": peft.__version__}


def run(s: Settings) -> dict[str, Any]:
    """Time ours, PEFT's and the textbook ablation in the same rounds; ratios of medians."""
    contestants = {"ours": None, "peft": peft_lora, "ours, textbook add": textbook}
    workloads = {}
    for name, adapt in contestants.items():
        print(f"  building {name}", file=sys.stderr, flush=True)
        workloads[name] = build(name, "lora", OPTIONS, s, adapt=adapt)
    counts = {n: param_counts(w.model) for n, w in workloads.items()}
    if len(set(counts.values())) != 1:  # a fair race trains the same parameters
        raise RuntimeError(f"the contestants differ in parameters: {counts}")
    steps = interleaved({n: w.step for n, w in workloads.items()}, s.pairs, s.device,
                        desc="ours vs PEFT steps", progress=s.progress)
    fwd = interleaved({n: w.forward for n, w in workloads.items()}, s.pairs, s.device,
                      desc="ours vs PEFT forward", progress=s.progress)
    rows = {}
    for name, w in workloads.items():
        row = w.summary(steps[name])
        row["forward"] = stats(fwd[name])
        rows[name] = row
    ours, peft = rows["ours"], rows["peft"]
    ratios = {
        "step": median_ratio(steps["ours"], steps["peft"]),
        "forward": median_ratio(fwd["ours"], fwd["peft"]),
        R.LEDGER_BYTES: ours[R.LEDGER_BYTES] / peft[R.LEDGER_BYTES],
        "activations_bytes": ours[R.ACTIVATIONS_PEAK_BYTES] / peft[R.ACTIVATIONS_PEAK_BYTES],
        "textbook_step": median_ratio(steps["ours, textbook add"], steps["peft"]),
        "textbook_activations_bytes": (rows["ours, textbook add"][R.ACTIVATIONS_PEAK_BYTES]
                                       / peft[R.ACTIVATIONS_PEAK_BYTES]),
    }
    return {"rows": rows, "ratios": ratios, "target": TARGET, "rounds": s.pairs,
            "step_ok": ratios["step"] <= TARGET, "ledger_ok": ratios[R.LEDGER_BYTES] <= TARGET,
            "options": OPTIONS, "times_s": {"step": steps, "forward": fwd}}
