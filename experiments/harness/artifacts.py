"""What a finished run leaves behind: its trained model and its test predictions.

`runs/<run_id>/model/` holds the trained model in the format its users' tools load, chosen by
the method's optional `save(model, dir)` hook (LoRA: its adapter file and a PEFT folder; full
fine-tuning: `save_pretrained` of the backbone with its tokenizer, and the head), or by default
every trained tensor (`requires_grad`, plus any parameter the method added, plus the head) keyed
by name in one safetensors file. `manifest.json` says how to rebuild the model: the method, the
backbone, the labels and the run's config; `load_model` (`make predict`) rebuilds it from there.
A random tiny backbone exists nowhere else, so its frozen weights are saved beside it.

`runs/<run_id>/predictions.parquet` holds one row per test example (`experiments.contract.record`'s
PRED_* columns). Both are written atomically; the record lists every file and its size.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.contract import record as R
from experiments.contract.io import removed_on_error
from experiments.dist.process import DistInfo
from experiments.dist.strategy import of
from experiments.harness import modelcard
from experiments.harness.build import TRAINED_FILE, build_model, load_tensors, trained_tensors
from experiments.harness.config import Config, UserError, flatten, method_errors, resolve, to_dict
from experiments.harness.evaluation import Predictions, classification_metrics
from experiments.harness.runtime import seed_everything
from experiments.inputs.backbones import load_backbone
from methods import METHODS

MANIFEST_FORMAT = 1
CARD_FILE = "README.md"  # the model card
BASE_FILE = "base.safetensors"  # a random tiny backbone's frozen weights
# manifest.json keys
M_FORMAT = "format"
M_METHOD = "method"
M_MODEL = "model"
M_NUM_LABELS = "num_labels"
M_LABEL_NAMES = "label_names"
M_POOLING = "pooling"
M_CONFIG = "config"
M_PRECISION = "precision"  # what the run computed in (its config may say auto)
M_FORMATS = "formats"  # {what: path inside the model folder}
# formats the harness reads when it rebuilds a model (a method's hook may add others)
F_BACKBONE = "backbone"  # a save_pretrained folder the model starts from instead of cfg.model
F_TRAINED = "trained"
F_BASE = "base"


def _name_labels(model: nn.Module, base: str, label_names: list[str]) -> None:
    """What a saved transformers config and adapter config carry: the base model as the user
    named it (never a path inside the virtual environment) and the label names."""
    model.config._name_or_path = base
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def save_model(model: nn.Module, run_dir: Path, cfg: Config, label_names: list[str],
               model_info: dict[str, Any], precision: str, metrics: dict[str, float] | None = None,
               pair: bool = False) -> dict[str, str]:
    """Write `run_dir/model/` (atomically: a temp folder renamed); returns the formats written,
    as paths relative to the run folder. `model` holds full tensors (gathered if sharded)."""
    final, tmp = run_dir / R.MODEL_DIR, run_dir / f".{R.MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = METHODS[cfg.method]
    _name_labels(model, modelcard.base_name(cfg, model_info), label_names)
    with method_errors():
        formats = dict(spec.save(model, tmp) or {}) if spec.save is not None else {}
    if spec.load is None:  # the harness reloads every trained tensor
        _save_tensors(trained_tensors(model), tmp / TRAINED_FILE)
        formats[F_TRAINED] = TRAINED_FILE
    tokenizer = getattr(model, "tokenizer", None)  # set by the harness's backbone loader
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if model_info.get("source") == "tiny" and F_BACKBONE not in formats:
        # A tiny backbone is random: the frozen weights the run trained on exist only here.
        trained = set(trained_tensors(model))
        _save_tensors({n: p.detach().cpu().clone() for n, p in model.named_parameters()
                       if n in model.base_param_names and n not in trained}, tmp / BASE_FILE)
        formats[F_BASE] = BASE_FILE
    manifest = {M_FORMAT: MANIFEST_FORMAT, M_METHOD: cfg.method, M_MODEL: model_info,
                M_NUM_LABELS: len(label_names), M_LABEL_NAMES: list(label_names),
                M_POOLING: cfg.pooling, M_PRECISION: precision, M_FORMATS: formats,
                M_CONFIG: to_dict(cfg)}
    (tmp / R.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / CARD_FILE).write_text(modelcard.card(cfg, model_info, label_names, formats,
                                                metrics or {}, pair, precision))
    for path in tmp.rglob("*"):  # as readable as the records (safetensors writes 0600)
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {k: f"{R.MODEL_DIR}/{v}" for k, v in formats.items()}


def write_predictions(run_dir: Path, predictions: Predictions) -> Path:
    """`run_dir/predictions.parquet`, written to a temp file and renamed."""
    path = run_dir / R.PREDICTIONS_FILE
    tmp = run_dir / f".{R.PREDICTIONS_FILE}.tmp"
    predictions.frame().to_parquet(tmp, index=False)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def listing(run_dir: Path, paths: list[Path], formats: dict[str, str]) -> dict[str, Any]:
    """The record's `artifacts` section: every file under `paths` with its size."""
    files: dict[str, int] = {}
    for path in paths:
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files.update({str(p.relative_to(run_dir)): p.stat().st_size for p in found})
    return {R.ARTIFACT_FILES: files, R.ARTIFACT_TOTAL_BYTES: sum(files.values()),
            R.ARTIFACT_FORMATS: formats}


def save_run(model: nn.Module, run_dir: Path, cfg: Config, label_names: list[str],
             model_info: dict[str, Any], predictions: Predictions | None, info: DistInfo,
             precision: str) -> dict[str, Any]:
    """Predictions and (with save=auto) the model; under several processes every rank takes part
    in gathering the weights and rank 0 writes. Returns the `artifacts` section (rank 0)."""
    paths, formats, metrics = [], {}, {}
    # A write that fails half-way (a full disk) removes its temporary copy (save_model's and
    # write_predictions' names): the run folder never holds a partial model or table.
    if info.main and predictions is not None:
        with removed_on_error(run_dir / f".{R.PREDICTIONS_FILE}.tmp"):
            paths.append(write_predictions(run_dir, predictions))
        metrics = classification_metrics(predictions.predicted, predictions.label,
                                          len(label_names))
        metrics.pop("n", None)
    pair = len(cfg.text_column.split(",")) == 2
    if cfg.save != "none":
        with of(info).full_weights(model) as full:
            if info.main:
                with removed_on_error(run_dir / f".{R.MODEL_DIR}.tmp"):
                    formats = save_model(full, run_dir, cfg, label_names, model_info, precision,
                                         metrics, pair)
                paths.append(run_dir / R.MODEL_DIR)
    return listing(run_dir, paths, formats) if info.main else {}


def model_dir(run: str, runs_dir: str | None = None) -> Path:
    """The model folder of a run: a run id in the runs folder, a run folder, or a model folder.
    UserError when there is no such run or it saved no model."""
    given = Path(run).expanduser()
    if not run.strip():
        raise UserError("no run given; pass RUN=<run_id or run folder>")
    candidates = [given / R.MODEL_DIR, given, R.runs_dir(runs_dir) / run / R.MODEL_DIR]
    for folder in candidates:
        if (folder / R.MANIFEST_FILE).is_file():
            return folder
    run_dir = given if (given / R.RECORD_FILE).is_file() else R.runs_dir(runs_dir) / run
    if not (run_dir / R.RECORD_FILE).is_file():
        raise UserError(f"no run {run!r}: neither a run folder nor a run id in "
                        f"{R.runs_dir(runs_dir)}")
    status = json.loads((run_dir / R.RECORD_FILE).read_text()).get(R.STATUS)
    raise UserError(f"run {run!r} has no saved model ({run_dir / R.MODEL_DIR} is missing; the "
                    f"run is {status}; only a finished run with save=auto saves one)")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a model folder."""
    manifest = json.loads((folder / R.MANIFEST_FILE).read_text())
    if manifest.get(M_FORMAT) != MANIFEST_FORMAT:
        raise UserError(f"{folder}: manifest format {manifest.get(M_FORMAT)!r} is not "
                        f"{MANIFEST_FORMAT}; it was written by another version of tunebench")
    return manifest


def run_config(manifest: dict[str, Any]) -> Config:
    """The run's resolved config, as saved."""
    return resolve(flatten(manifest[M_CONFIG]))


def _sources(folder: Path, manifest: dict[str, Any]) -> tuple[str | None, Path | None]:
    """(backbone source, base weights) of a model folder: None where the run's config says."""
    formats = manifest[M_FORMATS]
    source = str(folder / formats[F_BACKBONE]) if F_BACKBONE in formats else None
    return source, folder / formats[F_BASE] if F_BASE in formats else None


def base_model(folder: str | os.PathLike[str]) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, manifest): the run's backbone and an untrained head, before the method
    changes anything: what `peft.PeftModel.from_pretrained(model, folder / "peft")` expects."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    cfg = run_config(manifest)
    source, base = _sources(folder, manifest)
    seed_everything(cfg.seed)  # the head's init, as in the run (the method's file overwrites it)
    model, tok, _ = load_backbone(source or cfg.model, manifest[M_NUM_LABELS], cfg.pooling,
                                  cfg.classifier_dropout)
    if base is not None:
        load_tensors(model, base)
    return model, tok, manifest


def load_model(folder: str | os.PathLike[str]) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, manifest): the trained model a run saved, rebuilt."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    cfg = run_config(manifest)
    source, base = _sources(folder, manifest)
    seed_everything(cfg.seed)  # the head's init, as in the run (the method's file overwrites it)
    trained = manifest[M_FORMATS].get(F_TRAINED, TRAINED_FILE)
    built = build_model(cfg, manifest[M_NUM_LABELS], source=source, base_weights=base,
                        saved=folder, trained_file=trained)
    return built.model.eval(), built.tokenizer, manifest
