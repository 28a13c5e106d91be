"""The method contract: what a module in `methods/` provides, and the error it raises.

A method is a module with:

- `Config`: a dataclass of its options (addressed as `<method>.<field>` on the command line),
  optionally with `validate()` that raises `MethodError` for a bad value;
- `PRESET`: a dict of training defaults it needs (e.g. its learning rate), possibly empty;
- `apply(model, cfg) -> dict`: add modules and set `requires_grad` on the `Classifier`; the
  returned dict goes into the run record as `method_info`;
- optionally `prepare_data(model, splits, collate, cfg, ctx)`: a hook the harness calls once
  before training (the head method uses it to cache frozen features);
- optionally `save(model, dir) -> dict` and `load(model, dir)`: the trained model in the format
  its users' tools load (LoRA: a PEFT folder), returning {what: path inside `dir`}; `load` puts
  it back into a model `apply` prepared. A `backbone` entry names a `save_pretrained` folder the
  rebuilt model starts from (full fine-tuning). Without them the harness saves every trained
  tensor by name (`experiments.harness.artifacts`).

Methods know nothing of the training loop, the records or the reports: the harness imports
them, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import nn


class MethodError(ValueError):
    """A method option or model that the method cannot work with; the harness shows it as one
    line (exit code 2), like any other bad input."""


# What `prepare_data` receives and returns: the split datasets by name and their collate function.
Splits = Mapping[str, Any]
Collate = Callable[[list[Any]], Any]


@runtime_checkable
class Method(Protocol):
    """The module interface of a fine-tuning method (see the module docstring)."""

    Config: type
    PRESET: dict[str, Any]

    def apply(self, model: nn.Module, cfg: Any) -> dict[str, Any]:
        """Mark what trains (adding modules if the method has any); info for the record."""
        ...


class DataHook(Protocol):
    """The optional `prepare_data` hook: returns new splits, collate and info for the record.

    `run_cfg` is the harness's resolved config (the method's options are `run_cfg.method_cfg`);
    `ctx` offers `autocast()` and `to_device(batch)` for the run's device and precision."""

    def __call__(self, model: nn.Module, splits: Splits, collate: Collate, run_cfg: Any,
                 ctx: Any) -> tuple[Splits, Collate, dict[str, Any]]: ...
