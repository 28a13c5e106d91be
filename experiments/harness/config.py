"""Typed run configuration: defaults here, a per-method preset, then `key=value` overrides.

Resolution order is fixed: the dataclass defaults below <- the method's preset (its entry in
`experiments/presets/<data>-<model>.yaml` when present, else its code `PRESET`) <- the
command line. Method options live in the method's own dataclass and are addressed as
`<method>.<field>` (for example `lora.rank=16`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from experiments.contract import record
from experiments.contract.record import flatten  # the inverse of `to_dict`
from methods import METHODS
from methods.base import MethodError, options


class UserError(Exception):
    """A problem with what the user asked for: shown as one line, exit code 2, nothing written."""


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with a one-line doc (shown by `python -m experiments.train --help`)."""
    return field(default=default, metadata={"doc": doc})


PRECISIONS = ("auto", "fp32", "bf16-mixed", "mixed-12n")
POOLINGS = ("mean", "cls", "last", "native")
WANDB_MODES = ("auto", "online", "offline", "disabled")
DIST_STRATEGIES = ("none", "ddp", "fsdp")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop", "adamw8bit")  # see harness/optim.py
SAVE_MODES = ("auto", "none")


@dataclass
class Config:
    """Everything one run needs; the method's own options sit in `method_cfg`."""

    method: str = _f("lora", "fine-tuning method: " + ", ".join(METHODS))
    model: str = _f("minilm", "backbone: minilm (embedded), tiny-<arch>, a local dir or a hub id")
    data: str = _f("rotten_tomatoes", "rotten_tomatoes, reuters_r8, newsgroups20, a "
                   "CSV/JSONL/Parquet path or a hub dataset name")
    text_column: str = _f("text", "text column of a local file or hub dataset; two, comma "
                          "separated, for sentence pairs (sentence1,sentence2)")
    label_column: str = _f("label", "label column of a local file or hub dataset")
    train_size: int = _f(0, "subsample the train split to this many rows (0 = all)")
    eval_size: int = _f(0, "subsample validation and test to this many rows each (0 = all)")
    max_length: int = _f(64, "truncate inputs to this many tokens")
    pooling: str = _f("mean", "how the head reads the sequence: mean, cls or last (real token), "
                      "or native (the architecture's own AutoModelForSequenceClassification head)")
    classifier_dropout: float = _f(0.1, "dropout before the linear classification head")
    epochs: int = _f(2, "passes over the train split")
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = run all epochs)")
    batch_size: int = _f(32, "examples per optimizer step (global, across processes)")
    group_by_length: int = _f(50, "length-grouped batches: shuffle, sort mega-batches of this "
                              "many batches by length (far less padding); 0 = random batches")
    eval_batch_size: int = _f(128, "examples per evaluation forward pass")
    lr: float = _f(5e-5, "peak learning rate of AdamW")
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices only; not biases or norms)")
    warmup_ratio: float = _f(0.06, "fraction of steps with linear warm-up, then linear decay")
    max_grad_norm: float = _f(1.0, "clip the gradient norm to this (0 = no clipping)")
    activation_checkpointing: bool = _f(False, "recompute each transformer block's activations "
                                        "in the backward instead of keeping them (the "
                                        "backbone's own checkpointing): less memory, more time")
    optimizer_impl: str = _f("auto", "AdamW implementation: auto (fused where torch supports the "
                             "device and dtype, else foreach), fused, foreach, loop, adamw8bit "
                             "(bitsandbytes, 8-bit moments)")
    eval_every: int = _f(0, "also evaluate on validation every N steps (0 = each epoch only)")
    log_every: int = _f(10, "log train/loss and train/lr every N steps")
    seed: int = _f(0, "seed for model init, data order and dropout")
    device: str = _f("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    precision: str = _f("auto", "auto (bf16-mixed on CUDA and on CPUs with native bf16, else "
                        "fp32), fp32, bf16-mixed, mixed-12n")
    name: str = _f("", "experiment name: the W&B group (default: the method name)")
    runs_dir: str = _f("", "where run records go (default: $RUNS_DIR or ./runs)")
    wandb: str = _f("auto", "auto (online if logged in, else offline), online, offline, disabled")
    wandb_project: str = _f("", "W&B project (default: $WANDB_PROJECT or tunebench)")
    progress: bool = _f(True, "show a tqdm progress bar")
    checkpoint_every: int = _f(100, "save a checkpoint every N steps and at each epoch end "
                               "(0 = epoch ends only)")
    keep_checkpoint: bool = _f(False, "keep the checkpoint of a finished run (it is always kept "
                               "for failed and cancelled runs)")
    resume: str = _f("", "continue a run: its run_id, or auto (the latest unfinished run with "
                     "this config and seed)")
    save: str = _f("auto", "auto: a finished run saves its trained model under runs/<id>/model/ "
                   "(make predict loads it); none: only the record and predictions")
    dist: str = _f("none", "several processes (under torchrun): ddp (the default there) or fsdp "
                   "(full and lora); none = one process")
    preset: str = _f("auto", "training defaults under the command line: auto (the method's entry "
                     "in experiments/presets/<data>-<model>.yaml when there is one, else its code "
                     "PRESET), code (the code PRESET), or a presets file path")
    select_metric: str = _f("auto", "the validation metric that picks the state a run tests "
                            "and saves (and the tuner maximises): accuracy, macro_f1, or auto "
                            "(the task's: macro_f1 for reuters_r8 and newsgroups20, else "
                            "accuracy)")
    test_split: bool = _f(True, "false: the test split is never loaded nor evaluated (validation "
                          "only, as the tuner's runs)")
    method_cfg: Any = field(default=None, repr=False, metadata={"doc": "the method's options"})
    # The keys the user set (command line or dict), by `resolve`: a resume compares only these
    # with the saved config. A class default, not a field: it is no part of the run's config.
    given: ClassVar[dict[str, Any]] = {}

    def resolved_runs_dir(self) -> str:
        """The folder run records are written to."""
        return str(record.runs_dir(self.runs_dir))

    def experiment_name(self) -> str:
        """The W&B group: the explicit name, else the method."""
        return self.name or self.method




def to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as one plain dict (method options nested under the method)."""
    names = [f.name for f in dataclasses.fields(cfg) if f.name != "method_cfg"]
    out = {name: getattr(cfg, name) for name in names}
    out["runs_dir"] = cfg.resolved_runs_dir()
    if cfg.method_cfg is not None and dataclasses.fields(cfg.method_cfg):
        out[cfg.method] = dataclasses.asdict(cfg.method_cfg)
    return out


def config_hash(cfg: Config) -> str:
    """A short hash of what the run computes; seeds of one experiment share it."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in record.NOT_HASHED
         and not (k in record.HASH_OMITS_AT and v == record.HASH_OMITS_AT[k])}
    if isinstance(d.get(cfg.method), dict):  # method options, as "<method>.<option>"
        omit = {k.split(".", 1)[1]: v for k, v in record.HASH_OMITS_AT.items()
                if k.startswith(f"{cfg.method}.")}
        d[cfg.method] = {k: v for k, v in d[cfg.method].items()
                         if not (k in omit and v == omit[k])}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp))


def coerce(key: str, raw: Any, tp: Any) -> Any:
    """Turn a command-line string (or preset value) into the field's type, or raise UserError."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if isinstance(raw, str) and raw.lower() in ("none", "null", ""):
            return None
        tp = args[0]
    if not isinstance(raw, str):
        if tp is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = repr(float(raw))  # through the string path, which refuses inf and nan
        if isinstance(raw, tp) and not (tp is int and isinstance(raw, bool)):
            return raw
        raw = str(raw)
    try:
        if tp is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            value = float(raw)
            if math.isfinite(value):  # inf or nan is never a usable rate, ratio or scale
                return value
            raise UserError(f"{key}={raw!r} is not a finite number; e.g. {key}=0.001")
        if tp is str:
            return raw
    except ValueError:
        pass
    raise UserError(f"{key}={raw!r} is not {_type_name(tp)}; e.g. {key}={_example(tp)}")


def _example(tp: Any) -> str:
    return {int: "8", float: "0.001", bool: "true", str: "text"}.get(tp, "...")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj) if not isinstance(obj, type) else obj)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["a=1", "lora.rank=8"]` -> `{"a": "1", "lora.rank": "8"}`; anything else is a UserError."""
    out: dict[str, str] = {}
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            raise UserError(f"argument {arg!r} is not key=value; e.g. lr=1e-4 or lora.rank=16")
        key, value = arg.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _set(obj: Any, key: str, name: str, raw: Any) -> None:
    hints = _hints(obj)
    names = [f.name for f in dataclasses.fields(obj) if f.name != "method_cfg"]
    if name not in names:
        raise UserError(f"unknown config key {key!r}; known keys: {', '.join(names)}")
    setattr(obj, name, coerce(key, raw, hints[name]))


def resolve(args: list[str] | dict[str, Any]) -> Config:
    """Build the Config for `args` (key=value strings or a dict), preset applied, and check it."""
    overrides = parse_overrides(args) if isinstance(args, list) else dict(args)
    method = str(overrides.get("method", Config.method))
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    module = METHODS[method]
    cfg = Config(method=method, method_cfg=module.Config())
    preset, _ = applied_preset(method, *(str(overrides.get(k, getattr(Config, k)))
                                         for k in ("data", "model", "preset")))
    for key, value in {**preset, **overrides}.items():
        if "." in key:
            prefix, name = key.split(".", 1)
            if prefix != method:
                known = ", ".join(sorted(m for m in METHODS if m != method))
                hint = f" (options of method {prefix!r})" if prefix in METHODS else ""
                raise UserError(f"config key {key!r}{hint} does not apply to method {method!r}; "
                                f"use {method}.<option>" + ("" if hint else f" or one of {known}"))
            _set(cfg.method_cfg, key, name, value)
        else:
            _set(cfg, key, key, value)
    validate(cfg)
    cfg.given = overrides
    return cfg


# Keys that only change how a run reports; a resume may change them.
RESUME_MAY_CHANGE = ("progress", "wandb", "runs_dir", "resume")


def _value(cfg: Config, key: str) -> Any:
    prefix, dot, name = key.partition(".")
    if not dot:
        return getattr(cfg, key)
    if prefix != cfg.method or cfg.method_cfg is None:
        return None
    return dataclasses.asdict(cfg.method_cfg).get(name)  # an option's value, not a hook


def resumed_config(cfg: Config, saved: dict[str, Any], run_id: str) -> Config:
    """The saved config of run `run_id`, with the reporting keys `cfg` sets; a UserError when
    `cfg` sets any other key to a value the run did not train with (never silently ignored)."""
    keep = {k: getattr(cfg, k) for k in RESUME_MAY_CHANGE if k != "resume"}
    out = resolve({**flatten(saved), **keep, "resume": run_id})
    differ = [k for k in cfg.given if k not in RESUME_MAY_CHANGE
              and _value(cfg, k) != _value(out, k)]
    if differ:
        shown = ", ".join(f"{k}={_value(cfg, k)!r} (run: {_value(out, k)!r})" for k in differ)
        raise UserError(f"resume={cfg.resume}: {shown} differ from the run's saved config; a "
                        "resumed run keeps its config: drop them, or start a new run without "
                        "resume=")
    return out


PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
PRESETS_ENV = "TUNEBENCH_PRESETS_DIR"  # another folder of presets files (the tests' own)


def preset_path(data: str, model: str) -> Path:
    """experiments/presets/<data>-<model>.yaml (a path-like name by its file stem), or the
    same name in $TUNEBENCH_PRESETS_DIR when that is set."""
    def slug(name: str) -> str:
        stem = Path(name).stem if ("/" in name or Path(name).suffix) else name
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)

    folder = Path(os.environ.get(PRESETS_ENV) or PRESETS_DIR)
    return folder / f"{slug(data)}-{slug(model)}.yaml"


def applied_preset(method: str, data: str, model: str, preset: str) -> tuple[dict[str, Any], str]:
    """(values, where from) of the training defaults `preset=` selects for a method: a presets
    file's entry for it (over its code PRESET, which holds what the tuner kept fixed), else the
    code PRESET. The tuner writes the files (`experiments.tools.tune`)."""
    code = dict(METHODS[method].PRESET)
    where = f"methods/{method}.py PRESET"
    if preset == "code":
        return code, where
    path = preset_path(data, model) if preset == "auto" else Path(preset)
    if preset != "auto" and not path.is_file():
        raise UserError(f"preset={preset!r}: no such presets file; pass auto, code or the path "
                        "of a file `make tune` wrote")
    entry = _preset_entry(path, method) if path.is_file() else None
    if entry is None:
        return code, where
    return {**code, **entry}, _shown(path)


def _preset_entry(path: Path, method: str) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
        entry = (data.get("methods") or {}).get(method)
    except (yaml.YAMLError, AttributeError) as exc:
        raise UserError(f"{path}: not a presets file ({str(exc).splitlines()[0]}); fix or "
                        "remove it, or pass preset=code") from exc
    if entry is None:
        return None
    values = entry.get("values") if isinstance(entry, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"{path}: methods.{method} has no `values` mapping; fix or remove it, "
                        "or pass preset=code")
    return values


def _shown(path: Path) -> str:
    """A presets path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of: {', '.join(choices)}")


# Every numeric key's allowed range: (low, high, whether high itself is allowed). A test holds
# that each int/float field of Config is listed, so a new numeric key cannot skip its check.
SEED_MAX = 2**32 - 1  # numpy's seed range
RANGES: dict[str, tuple[float, float, bool]] = {
    "train_size": (0, math.inf, False), "eval_size": (0, math.inf, False),
    "max_length": (1, math.inf, False), "classifier_dropout": (0, 1, False),
    "epochs": (0, math.inf, False), "max_steps": (0, math.inf, False),
    "batch_size": (1, math.inf, False), "group_by_length": (0, math.inf, False),
    "eval_batch_size": (1, math.inf, False), "lr": (0, math.inf, False),
    "weight_decay": (0, math.inf, False), "warmup_ratio": (0, 1, False),
    "max_grad_norm": (0, math.inf, False), "eval_every": (0, math.inf, False),
    "log_every": (1, math.inf, False), "seed": (0, SEED_MAX, True),
    "checkpoint_every": (0, math.inf, False),
}


def _check_range(key: str, value: float) -> None:
    low, high, high_ok = RANGES[key]
    inside = low <= value and (value <= high if high_ok else value < high)
    if key == "lr":
        inside = inside and value > 0
    if not inside:
        span = f"in [{low}, {high}{']' if high_ok else ')'}" if high < math.inf else \
            "> 0" if key == "lr" else "a positive integer" if low == 1 else f">= {low}"
        raise UserError(f"{key}={value} is out of range: it must be {span}")


def _check_dist_method(dist: str, method: str) -> None:
    """Refuse a method the strategy cannot run (FSDP: full and lora)."""
    # Imported here: the strategies import the process layer, which imports this module.
    from experiments.dist.strategy import STRATEGIES, supports

    if not supports(dist, method):
        allowed = ", ".join(sorted(STRATEGIES[dist].methods or ()))
        raise UserError(f"dist={dist} supports the methods {allowed}, not {method!r}; use "
                        f"dist=ddp for {method}")


def validate(cfg: Config) -> None:
    """Check values that a type alone cannot (ranges, choices); the method checks its own."""
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("pooling", cfg.pooling, POOLINGS)
    _choice("wandb", cfg.wandb, WANDB_MODES)
    _choice("dist", cfg.dist, DIST_STRATEGIES)
    _check_dist_method(cfg.dist, cfg.method)
    _choice("optimizer_impl", cfg.optimizer_impl, OPTIMIZER_IMPLS)
    _choice("save", cfg.save, SAVE_MODES)
    _choice("select_metric", cfg.select_metric, ("auto", *record.SELECT_METRICS))
    for key in RANGES:
        _check_range(key, getattr(cfg, key))
    if cfg.epochs == 0 and cfg.max_steps == 0:
        raise UserError("epochs=0 with max_steps=0 trains nothing; set epochs>=1 or max_steps")
    spec = METHODS.get(cfg.method)
    check = spec.check_options if spec is not None and cfg.method_cfg is not None else None
    if check is not None:
        with method_errors():
            check(cfg.method_cfg)


@contextlib.contextmanager
def method_errors() -> Iterator[None]:
    """Turn a method's own `MethodError` into the harness's one-line `UserError`."""
    try:
        yield
    except MethodError as exc:
        raise UserError(str(exc)) from exc


def describe() -> str:
    """Every config key with its default and doc, for --help and the README."""
    lines = []
    for f in dataclasses.fields(Config):
        if f.name != "method_cfg":
            lines.append(f"  {f.name:<20} {f.default!s:<16} {f.metadata.get('doc', '')}")
    return "\n".join(lines)


def describe_methods() -> str:
    """Every method with its options and their defaults (each from the method's own Config),
    for --help."""
    lines = []
    for name, spec in METHODS.items():
        lines.append(f"  {name:<20} {spec.doc}")
        lines += [f"    {f'{name}.{o.name}':<26} {o.default!s:<12} {o.doc}"
                  for o in options(spec)]
    return "\n".join(lines)
