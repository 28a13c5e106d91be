"""Predict with a saved run: the label and its probability for each text.

    make predict RUN=<run_id or run folder> TEXT="a gorgeous, moving film"
    make predict RUN=<run_id> FILE=texts.txt          # one text per line
    python -m experiments.tools.predict <run_id or folder> --text "..." [--file PATH] [device=cpu]

The run's model is rebuilt from `runs/<run_id>/model/`
(`experiments.harness.artifacts.load_model`) on the backbone its record names, and run through
the run's own evaluation path: its `max_length`, its precision on the device, its batching.
Each text prints one line: `label<TAB>probability<TAB>text`. A run on sentence pairs
(`text_column=a,b`) takes each pair as `first<TAB>second`. A missing run, a run without a
saved model, or an empty FILE is one line on stderr and exit code 2.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.harness.cli import EXIT_OK, run_main, split
from experiments.harness.config import PRECISIONS, UserError, parse_overrides

FLAGS = {"text": True, "file": True, "runs-dir": True}
OPTIONS = ("device", "batch_size", "precision")  # key=value options


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


def one_line(text: str) -> str:
    """A text as one output field: a newline, tab or carriage return shown escaped (a TEXT with
    newlines is one text, and prints as one line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace(
        "\r", "\\r")


def predict_probs(model: torch.nn.Module, tokenizer: Any, texts: list[str], cfg: Any,
                  device: torch.device, batch_size: int | None = None,
                  precision: str | None = None) -> np.ndarray:
    """Class probabilities (texts, classes) through the harness's own evaluation path: the run's
    tokenization, its method's `prepare_data` hook (the head's cached features), its batching
    (`eval_loader`) and `evaluate`, so a test text gets what the run's evaluation gave it, bit
    for bit on the run's device and precision (under bf16 a different batching would not).
    `precision` defaults to what the config resolves to on `device`."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from experiments.harness.evaluation import eval_loader, evaluate
    from experiments.harness.runtime import Context, pick_precision, tokenize
    from methods import METHODS

    cfg = copy.copy(cfg)
    cfg.progress = False
    cfg.eval_batch_size = batch_size or cfg.eval_batch_size
    ctx = Context(device, precision or pick_precision(cfg.precision, device))
    model.to(device).eval()
    rows = Dataset.from_dict({**_columns(texts, cfg.text_column),
                              "label": [0] * len(texts)})  # labels unused
    splits = tokenize({"predict": rows}, tokenizer, cfg.max_length)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    spec = METHODS[cfg.method]
    if spec.prepare_data is not None:  # the head's cached features, as the run evaluated
        splits, collate, _ = spec.prepare_data(model, splits, collate, cfg, ctx)
    loader = eval_loader(splits["predict"], cfg.eval_batch_size, collate, ctx.dist,
                         torch.Generator())
    return evaluate(model, loader, ctx, model.num_labels).predictions.probs


def _columns(texts: list[str], text_column: str) -> dict[str, list[str]]:
    """The input columns: a run on sentence pairs (text_column=a,b) takes each pair as one text,
    `first<TAB>second`."""
    if len([c for c in text_column.split(",") if c.strip()]) < 2:
        return {"text": texts}
    halves = [t.split("\t", 1) for t in texts]
    if any(len(h) != 2 for h in halves):
        raise UserError(f"this run classifies sentence pairs ({text_column}); give each as "
                        "first<TAB>second, e.g. TEXT=$'a fine film\\tthe film was fine'")
    return {"text": [h[0] for h in halves], "text_pair": [h[1] for h in halves]}


def _quiet_transformers() -> None:
    """Loading a backbone logs weight reports and progress bars; a prediction prints results."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _main(argv: list[str]) -> int:
    from experiments.harness.artifacts import (
        M_LABEL_NAMES,
        M_PRECISION,
        load_model,
        model_dir,
        run_config,
    )
    from experiments.harness.runtime import pick_device, pick_precision

    args = split(argv, FLAGS, max_positionals=1)
    options = parse_overrides(args.overrides)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; predict takes: {', '.join(OPTIONS)}")
    if options.get("precision", "auto") not in PRECISIONS:
        raise UserError(f"precision={options['precision']!r} is not one of: "
                        f"{', '.join(PRECISIONS)}")
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
    # The run's own precision (its config may say auto, which resolves per machine), unless
    # asked otherwise: bf16 autocast also runs, emulated, on a CPU without native bf16.
    precision = pick_precision(options.get("precision") or manifest.get(M_PRECISION, "auto"),
                               device)
    probs = predict_probs(model, tokenizer, texts, run_config(manifest), device, batch_size,
                          precision)
    for text, p in zip(texts, probs, strict=True):
        k = int(p.argmax())
        print(f"{names[k]}\t{p[k]:.4f}\t{one_line(text)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: one line and exit code 2 for bad input."""
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
