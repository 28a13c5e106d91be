"""Predict with a saved run: the label and its probability for each text.

    make predict RUN=<run_id or run folder> TEXT="a gorgeous, moving film"
    make predict RUN=<run_id> FILE=texts.txt          # one text per line
    python -m experiments.predict <run_id or folder> --text "..." [--file PATH] [device=cpu]

The run's model is rebuilt from `runs/<run_id>/model/` (`experiments.artifacts.load_model`) on
the backbone its record names, and run the way the run evaluated: its `max_length`, its
precision on the device, batches of its `eval_batch_size`. Each text prints one line:
`label<TAB>probability<TAB>text`. A missing run, a run without a saved model, or an empty FILE
is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.cli import EXIT_OK, run_main, split
from experiments.config import UserError, parse_overrides

FLAGS = {"text": True, "file": True, "runs-dir": True}
OPTIONS = ("device", "batch_size")  # key=value options


def read_texts(text: str | None, file: str | None) -> list[str]:
    """The texts to classify: --text, then every non-blank line of --file."""
    texts = [text] if text else []
    if file:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"FILE={file!r} not found; pass a text file with one text per line")
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise UserError(f"FILE={file!r} has no text; put one text per line")
        texts += lines
    if not texts:
        raise UserError('nothing to classify; pass TEXT="..." or FILE=<one text per line>')
    return texts


@torch.no_grad()
def predict_probs(model: torch.nn.Module, tokenizer: Any, texts: list[str], cfg: Any,
                  device: torch.device, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (texts, classes), computed as the run's evaluation computes them:
    the same tokenization, dynamic padding, batch size and autocast."""
    from transformers import DataCollatorWithPadding

    from experiments.runtime import Context, pick_precision

    ctx = Context(device, pick_precision(cfg.precision, device))
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    size = batch_size or cfg.eval_batch_size
    model.to(device).eval()
    out = []
    for start in range(0, len(texts), size):
        enc = tokenizer(texts[start:start + size], truncation=True, max_length=cfg.max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(enc["input_ids"]))]
        with ctx.autocast():
            logits = model(**ctx.to_device(collate(rows))).logits
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out).numpy()


def _quiet_transformers() -> None:
    """Loading a backbone logs weight reports and progress bars; a prediction prints results."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _main(argv: list[str]) -> int:
    from experiments.artifacts import M_LABEL_NAMES, load_model, model_dir, run_config
    from experiments.runtime import pick_device

    args = split(argv, FLAGS, max_positionals=1)
    options = parse_overrides(args.overrides)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; predict takes: {', '.join(OPTIONS)}")
    texts = read_texts(args.flag("text"), args.flag("file"))  # before anything loads
    folder = model_dir(args.positionals[0] if args.positionals else "", args.flag("runs-dir"))
    device = pick_device(options.get("device", "auto"))
    try:
        batch_size = int(options.get("batch_size", 0)) or None
    except ValueError as exc:
        raise UserError(f"batch_size={options['batch_size']!r} is not an integer") from exc
    _quiet_transformers()
    model, tokenizer, manifest = load_model(folder)
    names = manifest[M_LABEL_NAMES]
    probs = predict_probs(model, tokenizer, texts, run_config(manifest), device, batch_size)
    for text, p in zip(texts, probs, strict=True):
        k = int(p.argmax())
        print(f"{names[k]}\t{p[k]:.4f}\t{text}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: one line and exit code 2 for bad input."""
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
