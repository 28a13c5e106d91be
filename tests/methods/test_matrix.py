"""Every method on every tiny architecture: after 3 AdamW steps exactly the intended parameters
changed, every frozen one is bit-identical, and the trainable count is the analytic value."""

from __future__ import annotations

import pytest
import torch

from experiments.inputs.backbones import TINY_ARCHS
from methods import METHODS
from methods.base import MethodError
from methods.model import param_split

RANK, PROMPT = 4, 5
OPTIONS = {"head": {}, "embedding": {}, "soft_prompt": {"prompt_length": PROMPT},
           "lora": {"rank": RANK}, "full": {}, "ia3": {}, "bitfit": {},
           "prefix": {"prefix_length": PROMPT}, "dora": {"rank": RANK}}
INPUT_EMBEDDING = {"tiny-bert": "backbone.embeddings.word_embeddings.weight",
                   "tiny-roberta": "backbone.embeddings.word_embeddings.weight",
                   "tiny-distilbert": "backbone.embeddings.word_embeddings.weight",
                   "tiny-gpt2": "backbone.wte.weight", "tiny-llama": "backbone.embed_tokens.weight"}
HEAD = {"classifier.weight", "classifier.bias"}
# (IA)³ vector sizes over the 2 blocks: key and value outputs plus the MLP down projection's input.
IA3 = {"tiny-bert": 2 * (32 + 32 + 64), "tiny-roberta": 2 * (32 + 32 + 64),
       "tiny-distilbert": 2 * (32 + 32 + 64), "tiny-gpt2": 2 * (96 + 128),
       "tiny-llama": 2 * (32 + 32 + 128)}
# Bias elements: per block 4 attention + 2 LayerNorm + 2 MLP biases, plus one LayerNorm outside.
BIASES = {"tiny-bert": 2 * 288 + 32, "tiny-roberta": 2 * 288 + 32,
          "tiny-distilbert": 2 * 288 + 32, "tiny-gpt2": 2 * 352 + 32}
KV_SIZE = 32  # key (= value) width of every tiny model: hidden 32, or LLaMA's 2 heads of 16


def intended(method: str, arch: str, names: list[str]) -> set[str]:
    """The parameter names a method should train, written down independently of the method."""
    if method == "full":
        return set(names)
    lora = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    extra = {"head": set(), "embedding": {INPUT_EMBEDDING[arch]},
             "soft_prompt": {"soft_prompt.weight"}, "lora": lora,
             "dora": lora | {n for n in names if n.endswith(".magnitude")},
             "ia3": {n for n in names if n.endswith(".ia3_scale")},
             "bitfit": {n for n in names if n.startswith("backbone.") and n.endswith("bias")},
             "prefix": {n for n in names if n.startswith("prefix.")}}[method]
    return HEAD | extra


def analytic_count(method: str, arch: str, model: torch.nn.Module, base_total: int,
                   lora_table: dict) -> int:
    """Trainable parameters from the architecture's sizes alone."""
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    head = hidden * 2 + 2
    lora = lora_table["count"](arch, RANK)
    outs = 2 * sum(n_out for _, _, n_out in lora_table["table"][arch].values())  # per DoRA layer
    return {"head": head, "embedding": vocab * hidden + head, "soft_prompt": PROMPT * hidden + head,
            "lora": lora + head, "full": base_total, "dora": lora + outs + head,
            "ia3": IA3[arch] + head, "bitfit": BIASES.get(arch, 0) + head,
            "prefix": 2 * 2 * KV_SIZE * PROMPT + head}[method]  # layers * (k, v) * size * length


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("method", list(OPTIONS))
def test_only_intended_parameters_change(tiny, make_batch, lora_table, method: str,
                                         arch: str) -> None:
    """Trainable == intended; 3 steps change each of them and leave the rest bit-identical."""
    model, tok, _ = tiny(arch)
    base_total = sum(p.numel() for p in model.parameters())
    module = METHODS[method]
    if method == "bitfit" and arch == "tiny-llama":
        with pytest.raises(MethodError, match="no bias terms"):
            module.apply(model, module.Config())
        return
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


def test_every_registered_method_is_in_the_matrix() -> None:
    """A method added to the registry is added here too (options, intended set, count)."""
    assert set(OPTIONS) == set(METHODS)
