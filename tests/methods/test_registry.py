"""The method contract is checked at registration: a module breaking it is refused in one line."""

from __future__ import annotations

import dataclasses
import types

import pytest

from methods import METHODS
from methods.base import MethodError, MethodSpec, method_spec


def _module(**members: object) -> types.ModuleType:
    """A method module with a Config dataclass and `apply`, plus `members` (None removes one)."""

    @dataclasses.dataclass
    class Config:
        rank: int = 4

    def apply(model: object, cfg: object) -> dict:
        return {}

    module = types.ModuleType("fake_method")
    found = {"Config": Config, "PRESET": {}, "apply": apply, **members}
    for name, value in found.items():
        if value is not None:
            setattr(module, name, value)
    return module


def test_every_registered_method_is_a_checked_spec() -> None:
    assert len(METHODS) == 9
    for name, spec in METHODS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name
        assert dataclasses.is_dataclass(spec.Config) and callable(spec.apply)
    assert METHODS["head"].prepare_data is not None and METHODS["lora"].prepare_data is None
    assert METHODS["lora"].lr_scales is not None and METHODS["full"].lr_scales is None
    assert METHODS["lora"].save is not None and METHODS["bitfit"].load is None


def test_a_module_without_apply_is_refused_in_one_line() -> None:
    with pytest.raises(MethodError, match=r"has no apply\(model, cfg\)") as err:
        method_spec("broken", _module(apply=None))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("hook, fn", [
    ("prepare_data", lambda model, splits: None),  # too few parameters
    ("lr_scales", lambda model, cfg, extra: {}),  # a required parameter the harness never passes
    ("save", lambda model: {}),
    ("merge", lambda: 0),
    ("load", "not a function"),
])
def test_a_hook_of_the_wrong_shape_is_refused_in_one_line(hook: str, fn: object) -> None:
    with pytest.raises(MethodError, match=f"method 'broken': {hook}") as err:
        method_spec("broken", _module(**{hook: fn}))
    assert "\n" not in str(err.value)


def test_a_module_without_a_config_dataclass_is_refused() -> None:
    with pytest.raises(MethodError, match="no Config dataclass"):
        method_spec("broken", _module(Config=dict))


def test_optional_hooks_are_none_and_a_well_shaped_hook_is_kept() -> None:
    def lr_scales(model: object, cfg: object, *, extra: int = 0) -> dict:
        return {}

    spec = method_spec("fine", _module(lr_scales=lr_scales))
    assert spec.lr_scales is lr_scales and spec.prepare_data is None and spec.save is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.save = lr_scales  # type: ignore[misc]


def test_help_lists_every_method_and_its_options_with_defaults() -> None:
    from experiments.harness.config import describe, describe_methods

    text = describe_methods()
    for name, spec in METHODS.items():
        assert f"  {name} " in text
        for f in dataclasses.fields(spec.Config):
            line = next(x for x in text.splitlines() if x.strip().startswith(f"{name}.{f.name} "))
            assert str(f.default) in line and len(line.split()) > 2  # a default and a doc
    method_line = next(x for x in describe().splitlines() if x.strip().startswith("method "))
    assert all(name in method_line for name in METHODS)


def test_an_inherited_validate_is_the_spec_check() -> None:
    assert METHODS["dora"].check_options is METHODS["lora"].check_options is not None
