"""What the benchmarks run: a fixed batch of real text, and a method's model taking training steps
through the harness's own code (`build_optimizer`, `forward_backward`, `apply_update`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.flops import counted_flops, non_embedding_params, peak_flops
from bench.timing import stats
from experiments.contract import record as R
from experiments.harness.build import Adapt, build_model
from experiments.harness.config import resolve
from experiments.harness.runtime import Context, pick_precision, seed_everything
from experiments.harness.step import apply_update, build_optimizer, forward_backward
from experiments.memory.ledger import FirstStepProbe, predict


@dataclass
class Settings:
    """How much to measure, on what."""

    device: torch.device
    precision: str  # training precision: fp32 on CPU, bf16-mixed on CUDA
    model: str = "minilm"
    batch_size: int = 32
    seq_len: int = 64
    warmup: int = 3  # untimed steps per workload: the 1st measures memory, the 2nd FLOPs
    rounds: int = 20  # timed steps per workload in the method table
    pairs: int = 30  # rounds of the ours-vs-PEFT comparison
    infer_rounds: tuple[int, int] = (200, 20)  # inference rounds at batch 1 and at batch_size
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # 16 too: at batch 32, full fine-tuning's activations pass its optimizer state below 32.
    seqs: tuple[int, ...] = (16, 32, 64, 128, 256)
    scale_rounds: int = 10  # timed steps per point of the scaling curves
    # The levers section: short real runs (key=value sizes) and rounds of each.
    lever_sizes: tuple[str, ...] = ("train_size=1024", "eval_size=256", "epochs=1")
    lever_rounds: int = 2
    profile_steps: int = 5  # profiled default LoRA steps (section 6)
    seed: int = 0
    progress: bool = True


@functools.lru_cache(maxsize=1)
def _examples(n: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The first n training examples of the embedded Rotten Tomatoes split."""
    from experiments.inputs.data import load_rotten_tomatoes

    train = load_rotten_tomatoes().splits["train"].select(range(n))
    return tuple(train["text"]), tuple(int(v) for v in train["label"])


def real_batch(tokenizer: Any, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """`batch_size` real training texts, padded or truncated to exactly `seq_len` tokens, with
    their labels: a fixed shape, so every method and every step computes the same amount."""
    texts, labels = _examples(max(batch_size, 32))
    enc = tokenizer(list(texts[:batch_size]), padding="max_length", truncation=True,
                    max_length=seq_len, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels[:batch_size])}


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(every parameter once, the trainable ones)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return (sum(p.numel() for p in unique),
            sum(p.numel() for p in unique if p.requires_grad))


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer inside our Classifier, also when PEFT wraps it."""
    return next(m for n, m in model.named_modules() if n.rpartition(".")[2] == "backbone")


@dataclass
class Workload:
    """One method's model, optimizer and fixed batch; `step` is one harness training step."""

    label: str
    method: str
    model: nn.Module
    ctx: Context
    batch: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    max_grad_norm: float
    info: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    flops: int = 0
    tokens: int = 0  # tokens the backbone processes per step (prompt tokens included)
    device_peak_bytes: int | None = None

    def __post_init__(self) -> None:
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def step(self) -> float:
        """Forward, backward, clip, optimizer step: what the harness does per batch."""
        loss = forward_backward(self.model, self.batch, self.ctx)
        value = loss.item()  # the harness reads the loss every step too
        apply_update(self.optimizer, self.trainable, self.max_grad_norm)
        return value

    def forward(self) -> float:
        """The forward half of a training step (graph recorded, then dropped)."""
        with self.ctx.autocast():
            loss = self.model(**self.batch).loss
        return loss.item()

    def warm_up(self, steps: int) -> None:
        """Untimed steps: the first measures the ledger and activations, the second the FLOPs
        and tokens, the rest let caches and allocators settle."""
        probe = FirstStepProbe(self.model, self.optimizer)
        with probe.activations(self.batch):
            loss = forward_backward(self.model, self.batch, self.ctx)
        loss.item()
        apply_update(self.optimizer, self.trainable, self.max_grad_norm)
        self.memory = probe.result()
        shapes: list[torch.Size] = []
        hook = _backbone(self.model).register_forward_hook(
            lambda _m, _a, out: shapes.append(out.last_hidden_state.shape))
        try:
            self.flops = counted_flops(self.step)
        finally:
            hook.remove()
        self.tokens = sum(s[0] * s[1] for s in shapes)
        for _ in range(max(0, steps - 2)):
            self.step()

    def summary(self, seconds: list[float]) -> dict[str, Any]:
        """The measured row: time, throughput, FLOPs, memory ledger and the prediction."""
        total, trainable = param_counts(self.model)
        t = stats(seconds)
        per_s = 1e3 / t["median_ms"]
        predicted, formula, _ = predict(total, trainable, self.ctx.precision)
        peak, _ = peak_flops(self.ctx.device)
        mem = self.memory
        examples = len(self.batch["labels"])
        return {
            "label": self.label, "method": self.method, "precision": self.ctx.precision,
            "params_total": total, "params_trainable": trainable, "step": t,
            "examples_per_step": examples, "tokens_per_step": self.tokens,
            "examples_per_s": examples * per_s, "tokens_per_s": self.tokens * per_s,
            "flops_per_step": self.flops,
            "flops_6nt": 6 * non_embedding_params(self.model) * self.tokens,
            "flops_per_s": self.flops * per_s,
            "mfu": self.flops * per_s / peak if peak else None,
            R.LEDGER_BYTES: mem.get(R.LEDGER_BYTES), R.WEIGHTS_BYTES: mem.get(R.WEIGHTS_BYTES),
            R.GRADS_BYTES: mem.get(R.GRADS_BYTES), R.OPTIMIZER_BYTES: mem.get(R.OPTIMIZER_BYTES),
            R.ACTIVATIONS_PEAK_BYTES: mem.get(R.ACTIVATIONS_PEAK_BYTES),
            R.PREDICTED_BYTES: predicted, "predicted_formula": formula,
            R.LEDGER_VS_PREDICTED: (mem[R.LEDGER_BYTES] / predicted
                                    if mem.get(R.LEDGER_BYTES) else None),
            R.DEVICE_PEAK_BYTES: self.device_peak_bytes, "info": self.info,
        }


def build(label: str, method: str, options: list[str], s: Settings, adapt: Adapt | None = None,
          seq_len: int | None = None, warmup: int | None = None) -> Workload:
    """A method's model on the fixed batch, warmed up, ledger and FLOPs measured.

    `options` are harness `key=value` overrides; `adapt` replaces the method's `apply` (PEFT,
    ablations) while keeping its config, learning rate and optimizer."""
    cfg = resolve([f"method={method}", f"model={s.model}", f"precision={s.precision}",
                   "wandb=disabled", "progress=false", *options])
    device = s.device
    ctx = Context(device, pick_precision(cfg.precision, device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    seed_everything(s.seed)
    built = build_model(cfg, 2, adapt=adapt, device=device)
    model, info = built.model, built.method_info
    batch = real_batch(built.tokenizer, s.batch_size, seq_len or s.seq_len)
    hook = built.spec.prepare_data if adapt is None else None
    if hook is not None:  # e.g. the head's feature cache: the batch becomes what the head trains on
        rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
        splits, collate, hook_info = hook(model, {"train": rows}, _stack, cfg, ctx)
        info.update(hook_info)
        batch = next(iter(DataLoader(splits["train"], batch_size=len(rows), collate_fn=collate)))
    model.train()
    w = Workload(label, method, model, ctx, ctx.to_device(batch),
                 build_optimizer(model, cfg, ctx.precision), cfg.max_grad_norm, info)
    w.warm_up(s.warmup if warmup is None else warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        w.device_peak_bytes = int(torch.cuda.max_memory_allocated(device) - before)
    return w
