"""Soft prompt: the prompt, mask and token types reach the backbone and the pooling extended, the
last real token is still what `last` pools, and the three inits do what they say."""

from __future__ import annotations

import pytest
import torch

import methods.model as model_mod
from experiments.harness.config import UserError, resolve
from experiments.inputs.backbones import TINY_ARCHS
from methods import soft_prompt
from methods.base import MethodError

LENGTH = 5


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_prompt_mask_and_token_types_are_extended(tiny, make_batch, monkeypatch, arch: str
                                                  ) -> None:
    """The backbone gets (B, L+T, H) embeddings whose first L rows are the prompt, with the mask
    [ones(L); mask] and L leading zero token types; the pooling then sees only the real tokens'
    hidden states and mask, as every other method's does."""
    model, tok, _ = tiny(arch)
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=LENGTH))
    batch = make_batch(tok)
    seen: dict = {}
    pool = model_mod.pool

    def spy_pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
        seen["hidden"], seen["mask"] = hidden.shape, mask
        return pool(hidden, mask, how)

    def spy_backbone(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["backbone"] = kwargs

    monkeypatch.setattr(model_mod, "pool", spy_pool)
    model.backbone.register_forward_pre_hook(spy_backbone, with_kwargs=True)
    model.eval()
    model(**batch)

    b, t = batch["input_ids"].shape
    h = model.config.hidden_size
    kw = seen["backbone"]
    assert kw.get("input_ids") is None and kw["inputs_embeds"].shape == (b, LENGTH + t, h)
    assert torch.equal(kw["inputs_embeds"][0, :LENGTH], model.soft_prompt.weight.detach())
    want_mask = torch.cat([torch.ones(b, LENGTH, dtype=torch.long), batch["attention_mask"]], 1)
    assert torch.equal(kw["attention_mask"], want_mask)
    assert seen["hidden"] == (b, t, h) and torch.equal(seen["mask"], batch["attention_mask"])
    if model.uses_token_types:
        assert kw["token_type_ids"].shape == (b, LENGTH + t)
        assert not kw["token_type_ids"][:, :LENGTH].any()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_padding_does_not_change_a_row(tiny, make_batch, arch: str) -> None:
    """A padded row's logits equal the same text alone: for decoders `last` pooling picks the
    last real token of the extended sequence, not a pad (nor a token L places early)."""
    decoder = arch in ("tiny-gpt2", "tiny-llama")
    model, tok, _ = tiny(arch, pooling="last" if decoder else "mean")
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=LENGTH))
    batch = make_batch(tok)
    short = make_batch(tok, texts=[tok.decode(batch["input_ids"][0], skip_special_tokens=True)])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # row 0 padded
    seen: dict = {}
    model.backbone.register_forward_hook(
        lambda mod, args, out: seen.__setitem__("hidden", out.last_hidden_state))
    model.classifier.register_forward_pre_hook(
        lambda mod, args: seen.__setitem__("features", args[0]))
    model.eval()
    with torch.no_grad():
        padded = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        if decoder:  # the pooled row is the hidden state at L + (real tokens) - 1
            last = LENGTH + int(batch["attention_mask"][0].sum()) - 1
            assert torch.equal(seen["features"][0], seen["hidden"][0, last])
        alone = model(**{k: v for k, v in short.items() if k != "labels"}).logits[0]
    assert torch.allclose(padded, alone, atol=1e-5)


def test_positional_call_matches_keywords(tiny, make_batch) -> None:
    """The hook also reads `model(input_ids, attention_mask)` called positionally."""
    model, tok, _ = tiny("tiny-bert")
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=LENGTH))
    batch = make_batch(tok)
    model.eval()
    with torch.no_grad():
        by_name = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        by_pos = model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(by_name.logits, by_pos.logits)


def test_text_init_repeats_the_tokenized_text(tiny) -> None:
    """init=text: the embeddings of the text's tokens, repeated and cut to prompt_length."""
    model, tok, _ = tiny("tiny-bert")
    table = model.get_input_embeddings().weight.detach().clone()
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=5, init="text",
                                                init_text="great movie"))
    ids = tok("great movie", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    assert torch.equal(model.soft_prompt.weight.detach(), table[[*ids, *ids, ids[0]]])


def test_vocab_and_random_inits(tiny) -> None:
    """init=vocab copies real (non-pad) token vectors; init=random matches their scale."""
    model, _, _ = tiny("tiny-gpt2")
    table = model.get_input_embeddings().weight.detach().clone()
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=8, init="vocab"))
    prompt = model.soft_prompt.weight.detach()
    matches = (prompt[:, None, :] == table[None]).all(-1)  # (length, vocab)
    assert matches.any(1).all() and not matches[:, model.config.pad_token_id].any()
    model, _, _ = tiny("tiny-gpt2")
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=64, init="random"))
    ratio = model.soft_prompt.weight.std() / table.std()
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize(("args", "message"), [
    (["soft_prompt.prompt_length=0"], "prompt_length=0"),
    (["soft_prompt.init=zeros"], "soft_prompt.init"),
    (["soft_prompt.init=text"], "init_text"),
])
def test_bad_options_are_user_errors(args: list[str], message: str) -> None:
    """Unusable options are rejected when the config resolves."""
    with pytest.raises(UserError, match=message):
        resolve(["method=soft_prompt", *args])


def test_prompt_longer_than_positions_is_rejected(tiny) -> None:
    """A prompt that fills every learned position cannot work; the model stays untouched."""
    model, _, _ = tiny("tiny-bert")
    with pytest.raises(MethodError, match="positions"):
        soft_prompt.apply(model, soft_prompt.Config(prompt_length=512))
    assert not hasattr(model, "soft_prompt")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_head_reads_the_real_tokens_only(tiny, make_batch, pooling: str) -> None:
    """Fair heads: with a soft prompt, `mean` averages the real tokens' hidden states (not the
    virtual ones) and `cls` reads the real [CLS], i.e. the backbone's output at position L."""
    model, tok, _ = tiny("tiny-bert", pooling=pooling)
    soft_prompt.apply(model, soft_prompt.Config(prompt_length=LENGTH))
    batch = make_batch(tok)
    seen: dict = {}
    model.backbone.register_forward_hook(
        lambda m, a, out: seen.update(hidden=out.last_hidden_state))
    model.dropout.register_forward_hook(lambda m, a, out: seen.update(pooled=a[0]))
    model.eval()
    model(**batch)
    pooled = seen["pooled"]
    hidden, mask = seen["hidden"][:, LENGTH:], batch["attention_mask"]
    if pooling == "cls":
        want = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        want = (hidden * m).sum(1) / m.sum(1)
    torch.testing.assert_close(pooled, want)
