"""The method contract: what a module in `methods/` provides, checked once when it registers.

A method is a module with:

- `Config`: a dataclass of its options (addressed as `<method>.<field>` on the command line; each
  field's `metadata["help"]` is its help line), optionally with `validate()` that raises
  `MethodError` for a bad value;
- `PRESET`: a dict of training defaults it needs (e.g. its learning rate), possibly empty;
- `apply(model, cfg) -> dict`: add modules and set `requires_grad` on the `Classifier`; the
  returned dict goes into the run record as `method_info`.

and optionally these hooks, each with the shape of its type below:

- `prepare_data(model, splits, collate, run_cfg, ctx)` (`DataHook`): called once before training
  (the head method caches frozen features); returns new splits, collate and info for the record;
- `lr_scales(model, cfg)` (`LrScales`): parameters that learn at a multiple of the learning rate
  (LoRA+);
- `save(model, dir) -> dict` and `load(model, dir)` (`SaveHook`, `LoadHook`): the trained model
  in the format its users' tools load (LoRA: a PEFT folder), returning {what: path inside
  `dir`}; `load` puts it back into a model `apply` prepared. A `backbone` entry names a
  `save_pretrained` folder the rebuilt model starts from (full fine-tuning). Without them the
  harness saves every trained tensor by name (`experiments.harness.artifacts`);
- `merge(model) -> int` (`MergeHook`): fold the method's added weights into the base layers for
  inference; returns how many layers it merged.

`method_spec` turns a module into a `MethodSpec` and refuses, with one line, a module without
`apply` or with a hook of the wrong shape; callers use the spec's fields, never look hooks up by
name. Methods know nothing of the training loop, the records or the reports: the harness imports
them, never the reverse.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn


class MethodError(ValueError):
    """A method option or model that the method cannot work with; the harness shows it as one
    line (exit code 2), like any other bad input."""


# What `prepare_data` receives and returns: the split datasets by name and their collate function.
Splits = Mapping[str, Any]
Collate = Callable[[list[Any]], Any]

Apply = Callable[[nn.Module, Any], "dict[str, Any] | None"]
# (model, splits, collate, run_cfg, ctx): `run_cfg` is the harness's resolved config (the method's
# options are `run_cfg.method_cfg`); `ctx` offers `autocast()` and `to_device(batch)`.
DataHook = Callable[[nn.Module, Splits, Collate, Any, Any], tuple[Splits, Collate, dict[str, Any]]]
LrScales = Callable[[nn.Module, Any], Mapping[nn.Parameter, float]]
SaveHook = Callable[[nn.Module, Any], dict[str, str]]
LoadHook = Callable[[nn.Module, Any], None]
MergeHook = Callable[[nn.Module], int]

# Each hook's parameters, as the harness passes them (positionally).
HOOK_PARAMS: dict[str, tuple[str, ...]] = {
    "apply": ("model", "cfg"),
    "prepare_data": ("model", "splits", "collate", "run_cfg", "ctx"),
    "lr_scales": ("model", "cfg"),
    "save": ("model", "dir"),
    "load": ("model", "dir"),
    "merge": ("model",),
    "Config.validate": ("self",),
}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its options, training defaults, `apply` and the hooks it declares
    (None where it has none)."""

    name: str
    Config: type
    PRESET: Mapping[str, Any]
    apply: Apply
    prepare_data: DataHook | None = None
    lr_scales: LrScales | None = None
    save: SaveHook | None = None
    load: LoadHook | None = None
    merge: MergeHook | None = None
    check_options: Callable[[Any], None] | None = None  # `Config.validate`, called on its options
    doc: str = ""


def _check_hook(name: str, hook: str, fn: Any) -> None:
    """Raise MethodError unless `fn` is callable with the hook's arguments, positionally."""
    params = HOOK_PARAMS[hook]
    want = f"{hook}({', '.join(params)})"
    if not callable(fn):
        raise MethodError(f"method {name!r}: {hook} is not a function; the contract is {want}")
    try:
        inspect.signature(fn).bind(*params)
    except TypeError:
        raise MethodError(f"method {name!r}: {hook}{inspect.signature(fn)} does not match the "
                          f"contract {want}") from None
    except ValueError:  # a builtin without a signature: trust it
        return


def method_spec(name: str, module: ModuleType) -> MethodSpec:
    """The checked spec of a method module; MethodError (one line) when it breaks the contract."""
    found = vars(module)
    if "apply" not in found:
        raise MethodError(f"method {name!r} ({module.__name__}) has no apply(model, cfg)")
    config = found.get("Config")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise MethodError(f"method {name!r} ({module.__name__}) has no Config dataclass")
    preset = found.get("PRESET", {})
    if not isinstance(preset, Mapping):
        raise MethodError(f"method {name!r}: PRESET must be a dict, not {type(preset).__name__}")
    hooks = {h: found[h] for h in HOOK_PARAMS if h in found}
    for hook, fn in hooks.items():
        _check_hook(name, hook, fn)
    check = getattr(config, "validate", None)  # inherited too (DoRA's is LoRA's)
    if check is not None:
        _check_hook(name, "Config.validate", check)
    doc = " ".join((inspect.getdoc(module) or "").split("\n\n", 1)[0].split())
    return MethodSpec(name=name, Config=config, PRESET=dict(preset), check_options=check,
                      doc=doc, **hooks)


@dataclass(frozen=True)
class Option:
    """One method option as `--help` shows it: `<method>.<name>`, its default and its doc."""

    name: str
    default: Any
    doc: str


def _field_comments(config: type) -> dict[str, str]:
    """Each field's trailing `# ...` comment (and comment lines right under it), by name, from
    the class sources of `config` and its bases: the option's doc lives beside its default."""
    docs: dict[str, str] = {}
    for cls in reversed(config.__mro__[:-1]):
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):  # defined where no source is kept (an interactive session)
            continue
        current = None
        for line in lines[1:]:
            code, _, comment = line.partition("  # ")
            head = code.strip().split(":", 1)[0]
            if code.strip() and head.isidentifier() and ":" in code:
                current = head
                docs[current] = comment.strip()
            elif current and code.strip().startswith("# ") and docs.get(current):
                docs[current] += " " + code.strip()[2:]
            else:
                current = None
    return docs


def options(spec: MethodSpec) -> list[Option]:
    """The method's options with defaults and docs, from its `Config` dataclass alone."""
    comments = _field_comments(spec.Config)
    out = []
    for f in dataclasses.fields(spec.Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(Option(f.name, default, f.metadata.get("help") or comments.get(f.name, "")))
    return out
