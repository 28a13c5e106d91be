"""Config: defaults <- preset <- overrides, typed coercion, and one-line errors."""

from __future__ import annotations

import pytest

from experiments.harness.config import (
    UserError,
    config_hash,
    describe,
    parse_overrides,
    resolve,
    to_dict,
)


def test_defaults_then_preset_then_overrides() -> None:
    cfg = resolve(["method=full"])
    assert cfg.lr == 5e-5 and cfg.epochs == 2  # full's preset
    cfg = resolve(["method=full", "lr=1e-3", "epochs=1", "progress=false"])
    assert (cfg.lr, cfg.epochs, cfg.progress) == (1e-3, 1, False)


def test_method_options_are_namespaced() -> None:
    cfg = resolve(["method=head", "head.cache_features=false"])
    assert cfg.method_cfg.cache_features is False
    assert to_dict(cfg)["head"] == {"cache_features": False}


@pytest.mark.parametrize(("args", "needle"), [
    (["lr=abc"], "lr='abc' is not a number"),
    (["nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["method=nosuch"], "unknown method 'nosuch'"),
    (["epochs=1.5"], "is not an integer"),
    (["progress=maybe"], "is not true or false"),
    (["head.nosuch=1", "method=head"], "unknown config key 'head.nosuch'"),
    (["method=full", "head.cache_features=false"], "does not apply to method 'full'"),
    (["precision=fp8"], "is not one of"),
    (["batch_size=0"], "must be a positive integer"),
    (["lr=-1"], "must be > 0"),
    (["justtext"], "is not key=value"),
])
def test_bad_input_is_one_clear_line(args: list[str], needle: str) -> None:
    with pytest.raises(UserError) as err:
        resolve(["method=full", *args] if not any(a.startswith("method=") for a in args)
                else args)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_hash_ignores_seed_and_reporting_keys() -> None:
    a = resolve(["method=full", "seed=1", "name=x"])
    b = resolve(["method=full", "seed=2", "runs_dir=/tmp/elsewhere"])
    c = resolve(["method=full", "lr=1e-4"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_parse_overrides_keeps_equals_in_values() -> None:
    assert parse_overrides(["name=a=b"]) == {"name": "a=b"}


def test_describe_lists_every_key() -> None:
    text = describe()
    for key in ("lr", "train_size", "eval_size", "precision", "wandb", "runs_dir"):
        assert f"  {key} " in text
