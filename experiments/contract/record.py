"""The run record's schema: every key the harness writes and analysis, bench and reports read.

`runs/<run_id>/record.json` is the contract between the harness (`experiments.train`, the
writer) and its readers (`analysis/`, `bench/`, `make memory`). Its keys are spelled here and
nowhere else, so a reader cannot drift from the writer. This module imports no torch: analysis
reads records through it without loading the training stack.

Layout (one JSON object; `schema` says which version):

    run_id, method, experiment, config_hash, status, started_at, finished_at, error, ...
    config      the fully resolved config (method options nested under the method's name)
    params      parameter counts: total, trainable, head, embedding, adapter, backbone
    metrics     test/accuracy, val/accuracy, val/best_accuracy, train/loss_final, ...
    memory      the memory ledger, the measured step, the formula's prediction
    time        train_s, eval_s, prepare_s, total_s, train_samples_per_s
    data, model, method_info, env, dist, val_history, artifacts
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

SCHEMA = 1
# The record versions readers understand; a newer one is skipped with a warning, not misread.
SUPPORTED_SCHEMAS = (1,)

# The order methods are listed in tables and plots: fewest trained parameters first. It is the
# registry's order (`methods.METHODS`, which a test holds this to); methods unknown here sort
# after these, by name.
METHOD_ORDER = ("head", "soft_prompt", "ia3", "bitfit", "prefix", "lora", "dora", "embedding",
                "full")

# Top-level keys.
SCHEMA_KEY = "schema"
RUN_ID = "run_id"
METHOD = "method"
EXPERIMENT = "experiment"
CONFIG_HASH = "config_hash"
STATUS = "status"
ERROR = "error"
STARTED_AT = "started_at"
FINISHED_AT = "finished_at"
RECORD_PATH = "record_path"
FAILED_AT_STEP = "failed_at_step"
LAST_CHECKPOINT = "last_checkpoint"
RESUMED = "resumed"
VAL_HISTORY = "val_history"
STEPS = "steps"
EPOCHS = "epochs"
PRECISION = "precision"
REQUIRED_KEYS = (RUN_ID, METHOD, CONFIG_HASH)

# Sections (nested objects).
CONFIG = "config"
PARAMS = "params"
METRICS = "metrics"
MEMORY = "memory"
TIME = "time"
DATA = "data"
MODEL = "model"
METHOD_INFO = "method_info"
ENV = "env"
DIST = "dist"
ARTIFACTS = "artifacts"
# Set by experiments/tools/publish.py on a committed copy: how it differs from the run's files
PUBLISHED = "published"
PUB_PROB_DECIMALS = "prob_decimals"  # class probabilities rounded to this many decimals

# Run status values.
RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"

# params.*
P_TOTAL, P_TRAINABLE = "total", "trainable"
P_HEAD, P_EMBEDDING, P_ADAPTER, P_BACKBONE = "head", "embedding", "adapter", "backbone"

# metrics.*
TEST_ACCURACY = "test/accuracy"
TEST_MACRO_F1 = "test/macro_f1"
TEST_N = "test/n"
VAL_ACCURACY = "val/accuracy"
VAL_BEST_ACCURACY = "val/best_accuracy"
VAL_MACRO_F1 = "val/macro_f1"
TRAIN_LOSS_FINAL = "train/loss_final"

# time.*
TRAIN_S = "train_s"
EVAL_S = "eval_s"
PREPARE_S = "prepare_s"
TOTAL_S = "total_s"
FIT_S = "fit_s"  # derived by analysis: prepare + train, what a method costs to fit
SAMPLES_PER_S = "train_samples_per_s"

# memory.*: the ledger (parameter, gradient and optimizer-state bytes counted from the tensors
# the first step holds; a cross-check of the formula, which it restates).
WEIGHTS_BYTES = "weights_bytes"
WEIGHTS_BY_DTYPE = "weights_by_dtype"
GRADS_BYTES = "grads_bytes"
GRADS_BY_DTYPE = "grads_by_dtype"
BUFFERS_BYTES = "buffers_bytes"
OPTIMIZER_BYTES = "optimizer_bytes"
OPTIMIZER_BY_DTYPE = "optimizer_by_dtype"
OPTIMIZER_SCALAR_BYTES = "optimizer_scalar_bytes"
TRAINABLE_STATE_BYTES = "trainable_state_bytes"
LEDGER_BYTES = "ledger_bytes"
LEDGER_METHOD = "ledger_method"
LEDGER_VS_PREDICTED = "ledger_vs_predicted"
# memory.*: tensors saved for backward on the first step.
ACTIVATIONS_PEAK_BYTES = "activations_peak_bytes"
ACTIVATIONS_METHOD = "activations_method"
# memory.*: the measured step (issue: memory measured, not assumed).
MEASURED_PEAK_BYTES = "measured_peak_bytes"
MEASURED_AT_PEAK = "measured_at_peak"
MEASURED_STATE_PEAK_BYTES = "measured_state_peak_bytes"
STATE_VS_PREDICTED = "state_vs_predicted"
WEIGHT_CASTS_BYTES = "weight_casts_bytes"
MEASURED_METHOD = "measured_method"
CUDA_MAX_ALLOCATED_BYTES = "cuda_max_allocated_bytes"
OPTIMIZER_IMPL = "optimizer_impl"
MEASURED_MAX = "measured_max"  # each category's own maximum over the step
MEASURED_AT_STATE_PEAK = "measured_at_state_peak"  # each category at the state peak
OPTIMIZER_TEMPORARIES = "optimizer_temporaries_at_state_peak"  # the largest, how each was made
MEASURED_STEP = "measured_step"  # training steps of the process before the measured one
MEASURED_STEP_S = "measured_step_s"  # that step's wall time, measurement included
# [rows, tokens] of the canonical batch the step measured; [rows, feature width] for a method
# that trains on cached features (its shapes then name `features`, not `input_ids`)
MEASURED_BATCH = "measured_batch"
MEASURED_BATCH_SHAPES = "measured_batch_shapes"  # that batch's tensor shapes, by input name
# The inputs measured_batch_shapes names: a token batch's ids, or the head's cached features
BATCH_TOKENS = "input_ids"
BATCH_FEATURES = "features"
MEASURED_BATCH_RULE = "measured_batch_rule"  # how the canonical shape was chosen
CUDA_VS_MEASURED = "cuda_vs_measured"  # cuda_max_allocated_bytes / measured_peak_bytes
CUDA_RUN_MAX_ALLOCATED_BYTES = "cuda_run_max_allocated_bytes"  # over the whole run
CUDA_RUN_MAX_RESERVED_BYTES = "cuda_run_max_reserved_bytes"
RSS_METHOD = "rss_method"
# The categories of memory.measured_at_peak, measured_max and measured_at_state_peak (bytes by
# what owns a storage; experiments/memory/memtrack.py files each storage under one).
CAT_PARAMETERS = "parameters"
CAT_BUFFERS = "buffers"
CAT_INPUTS = "inputs"
CAT_OPTIMIZER_STATE = "optimizer_state"
CAT_GRADIENTS = "gradients"
CAT_WEIGHT_CASTS = "weight_casts"
CAT_ACTIVATIONS = "activations"
CAT_OPTIMIZER_TEMPORARIES = "optimizer_temporaries"
CAT_TEMPORARIES = "temporaries"
# memory.*: the process-level figure (CUDA max allocated; CPU resident-set growth, approximate).
PEAK_BYTES = "peak_bytes"
DEVICE_PEAK_BYTES = "device_peak_bytes"
RSS_GROWTH_BYTES = "rss_growth_bytes"
PEAK_METHOD = "peak_method"
# memory.*: the lecture's prediction.
PREDICTED_BYTES = "predicted_bytes"
PREDICTED_FORMULA = "predicted_formula"
PER_RANK = "per_rank"

# env.*
GIT_COMMIT = "git_commit"
GIT_DIRTY = "git_dirty"  # tracked files differed from the commit when the run started
DEVICE_NAME = "device_name"
TORCH_VERSION = "torch"
WANDB = "wandb"

# Config keys that change where or how a run is reported, not what it computes: the config hash
# leaves them out, so the seeds of one experiment share a hash, and analysis groups by it.
NOT_HASHED = ("name", "runs_dir", "wandb", "wandb_project", "progress", "seed",
              "checkpoint_every", "keep_checkpoint", "resume", "save", "preset")
# Config keys added after records were published: at these values the hash leaves them out, so
# the hashes of earlier records (results/) still hold.
HASH_OMITS_AT = {"test_split": True, "activation_checkpointing": False, "select_metric": "auto",
                 # a method's option, "<method>.<option>": the 4-bit base (methods/quantize.py)
                 "lora.quantize": "none", "lora.double_quant": True,
                 "dora.quantize": "none", "dora.double_quant": True}

# config.* keys readers compare runs by (the harness's Config fields; a method's own options
# nest under its name, e.g. config.lora.rank).
C_SEED = "seed"
C_MODEL = "model"
C_DATA = "data"
C_TEXT_COLUMN = "text_column"
C_LABEL_COLUMN = "label_column"
C_TRAIN_SIZE = "train_size"
C_EVAL_SIZE = "eval_size"
C_MAX_STEPS = "max_steps"
C_MAX_LENGTH = "max_length"
# The config keys that fix the test split (the test subsample is a fixed shuffle's first
# eval_size rows): runs that agree on them were tested on the same examples.
TEST_SPLIT_KEYS = (C_DATA, C_TEXT_COLUMN, C_LABEL_COLUMN, C_EVAL_SIZE)

# val_history entries: {"step": optimizer step, "accuracy": validation accuracy, ...}.
H_STEP = "step"
H_ACCURACY = "accuracy"

# Files in a run folder.
RECORD_FILE = "record.json"
METRICS_FILE = "metrics.jsonl"
ERROR_FILE = "error.txt"


def col(section: str, key: str) -> str:
    """The flattened column name analysis uses for a section's key: `memory.peak_bytes`."""
    return f"{section}.{key}"


def runs_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where run records live: the explicit folder, else $RUNS_DIR, else ./runs."""
    return Path(explicit or os.environ.get("RUNS_DIR") or "runs")


def reports_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where figures and summaries go: the explicit folder, else $REPORTS_DIR, else ./reports."""
    return Path(explicit or os.environ.get("REPORTS_DIR") or "reports")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested sections as dotted keys (a record's columns, a
    config's `method.option` keys); lists and scalars are kept as values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))  # an empty section adds no column
        else:
            out[name] = value
    return out


def method_rank(method: str) -> tuple[int, str]:
    """A sort key that lists methods in METHOD_ORDER, unknown ones after, by name."""
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return order, method

# Per-example test predictions, `runs/<run_id>/predictions.parquet`: one row per test example.
PREDICTIONS_FILE = "predictions.parquet"
PRED_EXAMPLE = "example"  # the example's index in the test split (the same across methods)
PRED_LABEL = "label"
PRED_PREDICTED = "predicted"
PRED_PROB_PREFIX = "prob_"  # prob_0, prob_1, ...: class probabilities

# artifacts.*: what a finished run leaves behind besides the record (`save=auto`), so a user
# can load or predict with it without rerunning.
# `runs/<run_id>/model/` holds the trained model in the formats its users' tools load, and a
# manifest that says how to rebuild it (`experiments.harness.artifacts`, `make predict`).
C_SAVE = "save"  # config key: auto (save the model) | none
MODEL_DIR = "model"
MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = "files"  # {path relative to the run folder: size in bytes}
ARTIFACT_TOTAL_BYTES = "total_bytes"
ARTIFACT_FORMATS = "formats"  # {what: path relative to the run folder}, e.g. peft: model/.

# data.*: how the splits were made, and what was dropped before splitting.
D_SPLIT = "split"
D_DUPLICATES_DROPPED = "duplicates_dropped"
D_DUPLICATES_BY_SPLIT = "duplicates_dropped_by_split"  # {"train": n, "test": n, "train_in_test": n}
D_UNLABELLED_DROPPED = "unlabelled_dropped"  # rows without a label in a labelled split
D_UNLABELLED_SPLITS = "unlabelled_splits"  # hub splits without labels, never evaluated on
D_TEXT_DROPPED = "rows_dropped_no_text"  # rows whose text was null or blank
D_LABELS_NORMALISED = "labels_normalised"  # rows whose label differed from its class's spelling
D_LABEL_SPELLINGS = "label_spellings_merged"  # {class: [other spellings merged into it]}
D_ROWS = "{}_rows"  # a split's rows used (train_rows, validation_rows, test_rows)
D_SPLIT_ROWS = "split_rows"  # {split: rows} before train_size / eval_size subsampling
D_SHARED = "shared_between_splits"  # {"train&test": texts in both, ...} after subsampling

# Where a run's training defaults came from (`preset=`; experiments/presets/, `make tune`).
PRESET = "preset"  # top-level: {"from": file or code PRESET, "values": {...}}
PRESET_FROM = "from"
PRESET_VALUES = "values"
# Model selection within a run: the state with the best validation score (in the task's metric)
# is tested and saved.
SELECTED_STEP = "selected_step"  # top-level: the optimizer step of the selected state
SELECTION = "selection"  # top-level: how it was chosen
SELECTION_METRIC = "selection_metric"  # top-level: the metric it maximised (a SELECT_METRICS)
SELECT_METRICS = ("accuracy", "macro_f1")  # a split's metric names (harness/evaluation.py)
VAL_SELECTED_SCORE = "val/selected_score"  # metrics.*: the selected state's validation score
TEST_EVALUATED = "test_evaluated"  # top-level: false when test_split=false (validation only)
PRUNED = "pruned"  # a run status: an observer (the tuner's pruner) stopped it early
PRUNED_AT_STEP = "pruned_at_step"
TUNE = "tune"  # top-level: {"study": name, "trial": number} for a tuner's trial run

# env.*: where a run ran. The suite's executor (experiments/tools/executors.py) tells the run it
# starts through these environment variables, not config keys, so placement leaves the config
# hash alone; a run started by hand, or by the local executor, says executor=local.
HOST = "host"
EXECUTOR = "executor"  # local | ray
RAY_NODE_ID = "ray_node_id"  # the Ray node that ran it (None outside Ray)
EXECUTOR_ENV = "TUNEBENCH_EXECUTOR"
RAY_NODE_ID_ENV = "TUNEBENCH_RAY_NODE_ID"

# The memory levers (docs/memory-levers.md): a 4-bit frozen base (QLoRA, methods/quantize.py),
# 8-bit AdamW (optimizer_impl=adamw8bit), activation checkpointing.
CAT_WEIGHTS_4BIT = "weights_4bit"  # a category: the 4-bit codes of a quantised base's weights
CAT_QUANT_CONSTANTS = "quant_constants"  # a category: their scales, code tables and offsets
QUANT_CONSTANTS_BYTES = "quant_constants_bytes"  # memory.*: the ledger's count of them
QUANTIZED_PARAMS = "quantized_params"  # memory.*: elements held in 4 bits (the formula's Nq)
ACTIVATION_CHECKPOINTING = "activation_checkpointing"  # a config key and memory.* flag

# metrics.* for sentence-pair and imbalanced tasks: F1 of class 1 for binary tasks (macro-F1,
# above, for every task) and Matthews correlation for every task (CoLA's metric).
TEST_F1, VAL_F1 = "test/f1", "val/f1"
TEST_MCC, VAL_MCC = "test/mcc", "val/mcc"

# The record as types: the harness builds these (`experiments.train.new_record`, the loop's
# metrics and time) and readers annotate with them; on disk it is the same JSON. Every section
# is total=False: an unfinished run has no results yet, and later versions of the harness add
# keys (a reader `.get`s what older records may lack). Memory, config, data, model and env stay
# open mappings: their keys are the constants above, too many and too variable to enumerate.
Params = TypedDict("Params", {P_TOTAL: int, P_TRAINABLE: int, P_HEAD: int, P_EMBEDDING: int,
                              P_ADAPTER: int, P_BACKBONE: int}, total=False)
Metrics = TypedDict("Metrics", {TEST_ACCURACY: float, TEST_MACRO_F1: float, TEST_N: int,
                                TEST_F1: float, TEST_MCC: float, VAL_ACCURACY: float,
                                VAL_BEST_ACCURACY: float, VAL_MACRO_F1: float, VAL_F1: float,
                                VAL_MCC: float, VAL_SELECTED_SCORE: float,
                                TRAIN_LOSS_FINAL: float}, total=False)
Time = TypedDict("Time", {TRAIN_S: float, EVAL_S: float, PREPARE_S: float, TOTAL_S: float,
                          SAMPLES_PER_S: float}, total=False)
ValPoint = TypedDict("ValPoint", {H_STEP: int, H_ACCURACY: float}, total=False)
Section = dict[str, Any]
Record = TypedDict("Record", {
    SCHEMA_KEY: int, RUN_ID: str, METHOD: str, EXPERIMENT: str, CONFIG_HASH: str, STATUS: str,
    STARTED_AT: str, FINISHED_AT: str, ERROR: "str | None", RECORD_PATH: str,
    FAILED_AT_STEP: int, LAST_CHECKPOINT: "Section | None", RESUMED: list[Section],
    CONFIG: Section, METHOD_INFO: Section, MODEL: Section, DATA: Section, ENV: Section,
    DIST: Section, PRECISION: str, PARAMS: Params, METRICS: Metrics, MEMORY: Section,
    TIME: Time, VAL_HISTORY: list[ValPoint], STEPS: int, EPOCHS: float, ARTIFACTS: Section,
    PRESET: Section, SELECTED_STEP: int, SELECTION: str, TEST_EVALUATED: bool,
    PRUNED_AT_STEP: int, TUNE: Section, PUBLISHED: Section}, total=False)

# What each typed section holds, for `type_errors`: (section key, its TypedDict).
TYPED_SECTIONS = ((PARAMS, Params), (METRICS, Metrics), (TIME, Time))


def type_errors(record: Mapping[str, Any]) -> list[str]:
    """Where a record's typed sections hold a value of another type (a number where a number
    belongs: ints count as floats; None is a missing value); [] for a well-formed record."""
    errors = []
    for section, kind in TYPED_SECTIONS:
        values = record.get(section) or {}
        for key, want in typing.get_type_hints(kind).items():
            value = values.get(key)
            number = want in (int, float) and isinstance(value, int | float)
            if value is not None and not number and not isinstance(value, want):
                errors.append(f"{section}.{key}={value!r} is not {want.__name__}")
    return errors
