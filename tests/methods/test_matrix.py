"""Every method on every tiny architecture: after 3 AdamW steps exactly the intended parameters
changed, every frozen one is bit-identical, and the trainable count is the analytic value."""

from __future__ import annotations

import pytest
import torch

from experiments.backbones import TINY_ARCHS
from methods import METHODS
from methods.model import param_split

RANK, PROMPT = 4, 5
OPTIONS = {"head": {}, "embedding": {}, "soft_prompt": {"prompt_length": PROMPT},
           "lora": {"rank": RANK}, "full": {}}
INPUT_EMBEDDING = {"tiny-bert": "backbone.embeddings.word_embeddings.weight",
                   "tiny-roberta": "backbone.embeddings.word_embeddings.weight",
                   "tiny-distilbert": "backbone.embeddings.word_embeddings.weight",
                   "tiny-gpt2": "backbone.wte.weight", "tiny-llama": "backbone.embed_tokens.weight"}
HEAD = {"classifier.weight", "classifier.bias"}


def intended(method: str, arch: str, names: list[str]) -> set[str]:
    """The parameter names a method should train, written down independently of the method."""
    if method == "full":
        return set(names)
    extra = {"head": set(), "embedding": {INPUT_EMBEDDING[arch]},
             "soft_prompt": {"soft_prompt.weight"},
             "lora": {n for n in names if ".lora_A." in n or ".lora_B." in n}}[method]
    return HEAD | extra


def analytic_count(method: str, arch: str, model: torch.nn.Module, base_total: int,
                   lora_table: dict) -> int:
    """Trainable parameters from the architecture's sizes alone."""
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    head = hidden * 2 + 2
    return {"head": head, "embedding": vocab * hidden + head, "soft_prompt": PROMPT * hidden + head,
            "lora": lora_table["count"](arch, RANK) + head, "full": base_total}[method]


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("method", list(OPTIONS))
def test_only_intended_parameters_change(tiny, make_batch, lora_table, method: str,
                                         arch: str) -> None:
    """Trainable == intended; 3 steps change each of them and leave the rest bit-identical."""
    model, tok, _ = tiny(arch)
    base_total = sum(p.numel() for p in model.parameters())
    module = METHODS[method]
    info = module.apply(model, module.Config(**OPTIONS[method]))
    assert info["trains"]
    names = [n for n, _ in model.named_parameters()]
    want = intended(method, arch, names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    assert param_split(model)["trainable"] == analytic_count(method, arch, model, base_total,
                                                             lora_table)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # No weight decay: a parameter then changes only through a gradient that reached it.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.0)
    batch = make_batch(tok)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = dict(model.named_parameters())
    changed = {n for n in names if not torch.equal(before[n], after[n].detach())}
    assert changed == want, (sorted(want - changed)[:5], sorted(changed - want)[:5])
