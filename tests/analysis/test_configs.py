"""Naming configurations: labels from what differs, smoke runs, main experiments."""

from __future__ import annotations

import pandas as pd

from analysis import configs


def test_config_labels_name_what_differs() -> None:
    df = pd.DataFrame({
        "method": ["lora", "lora", "lora", "head"], "config_hash": ["r8", "r8b", "r16", "h"],
        "config.lora.rank": [8, 8, 16, None], "config.lora.targets": ["all", "mlp", "all", None],
        "config.seed": [0, 1, 2, 0], "config.lr": [1e-3] * 4,
    })
    labels = configs.config_labels(df)
    assert labels == {"r8": "lora r=8 all layers", "r8b": "lora r=8 MLP",
                      "r16": "lora r=16 all layers", "h": "head"}


def test_a_main_experiment_is_the_plain_method_and_a_variant_names_what_it_changes() -> None:
    """Where the main experiment ran (`full`, `lora-all`), it is labelled by its method alone,
    and a variant only by the options it changes from it (not every option that varies)."""
    df = pd.DataFrame({
        "method": ["lora", "lora", "lora", "lora", "full", "full"],
        "experiment": ["lora-all", "lora-attention", "lora-nf4", "lora-rslora:rank=16",
                       "full", "full-adamw8bit"],
        "config_hash": ["all", "attn", "nf4", "rs16", "f", "f8"],
        "config.lora.rank": [8, 8, 8, 16, None, None],
        "config.lora.targets": ["all", "attention", "all", "all", None, None],
        "config.lora.quantize": ["none", "none", "nf4", "none", None, None],
        "config.optimizer_impl": ["auto"] * 5 + ["adamw8bit"], "config.seed": [0] * 6,
    })
    assert configs.config_labels(df) == {
        "all": "lora", "attn": "lora attention", "nf4": "lora quantize=nf4", "rs16": "lora r=16",
        "f": "full", "f8": "full optimizer_impl=adamw8bit"}
    # Without the main experiment, every option that varies is named, as before.
    assert configs.config_labels(df[df["config_hash"] != "all"])["nf4"] == (
        "lora r=8 all layers quantize=nf4")
    # rsLoRA's alpha 4 sqrt(2) reads in four digits; a whole alpha stays whole.
    assert configs.describe("lora.alpha", 5.656854) == "α=5.657"
    assert configs.describe("lora.alpha", 16.0) == "α=16"


def test_config_labels_mark_smoke_runs_and_never_dump_configs() -> None:
    df = pd.DataFrame({
        "method": ["lora", "lora", "lora", "lora", "full", "soft_prompt"],
        "config_hash": ["big", "smoke", "smoke2", "r16", "f", "sp"],
        "config.train_size": [0, 64, 128, 0, 0, 0], "config.eval_size": [0, 32, 32, 0, 0, 0],
        "config.max_steps": [0, 4, 4, 0, 0, 0], "config.lora.rank": [8, 8, 8, 16, None, None],
        "config.lora.targets": ["attention"] * 4 + [None, None],
        "config.soft_prompt.prompt_length": [None] * 5 + [20],
        "config.seed": [0] * 6, "config.wandb": ["disabled", "online", "x", "y", "z", "w"],
    })
    assert configs.config_labels(df) == {
        "big": "lora r=8", "smoke": "lora r=8 (smoke, train_size=64)",
        "smoke2": "lora r=8 (smoke, train_size=128)", "r16": "lora r=16", "f": "full",
        "sp": "soft_prompt"}
    # When every configuration is a smoke run, saying so on each label adds nothing.
    only_smoke = df[df["config_hash"].isin(["smoke", "smoke2"])]
    assert set(configs.config_labels(only_smoke).values()) == {"lora (train_size=64)",
                                                               "lora (train_size=128)"}
    # Options no word tells apart keep distinct labels: the config hash settles it.
    twins = pd.DataFrame({"method": ["lora", "lora"], "config_hash": ["aaaaaa1", "bbbbbb2"],
                          "config.lr": [1e-3, 1.0000001e-3]})
    assert configs.config_labels(twins) == {"aaaaaa1": "lora lr=0.001 #aaaaaa",
                                            "bbbbbb2": "lora lr=0.001 #bbbbbb"}


def test_a_tasks_own_budget_is_no_smoke_run() -> None:
    """Reuters R8's comparison trains on 2,000 rows by design: not a smoke run there; fewer
    rows, or 2,000 on a task whose budget is its whole split, are."""
    def row(data: str, train_size: int, max_steps: int = 0) -> dict[str, object]:
        return {"config.data": data, "config.train_size": train_size,
                "config.eval_size": 0, "config.max_steps": max_steps}

    assert not configs.is_smoke(row("reuters_r8", 2000))
    assert not configs.is_smoke(row("rotten_tomatoes", 0))
    assert configs.is_smoke(row("reuters_r8", 500))
    assert configs.is_smoke(row("reuters_r8", 2000, max_steps=4))
    assert configs.is_smoke(row("rotten_tomatoes", 2000))
    assert configs.is_smoke(row("/tmp/my.csv", 2000))
