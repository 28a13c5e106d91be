"""The strategy objects: one per `dist=` value, the methods each runs, the config's check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from experiments.dist.process import SINGLE
from experiments.dist.strategy import DDP, FSDP, STRATEGIES, Strategy, of, supports
from experiments.harness.config import DIST_STRATEGIES, UserError, resolve


def test_every_dist_choice_has_one_strategy() -> None:
    assert tuple(STRATEGIES) == DIST_STRATEGIES
    assert [type(s) for s in STRATEGIES.values()] == [Strategy, DDP, FSDP]
    assert of(SINGLE) is STRATEGIES["none"]


def test_fsdp_runs_only_full_and_lora_and_validate_says_so_in_one_line() -> None:
    assert supports("fsdp", "full") and supports("fsdp", "lora") and not supports("fsdp", "head")
    assert all(supports(name, "head") for name in ("none", "ddp"))
    with pytest.raises(UserError, match=r"dist=fsdp supports the methods full, lora, not 'head'"
                       ) as err:
        resolve(["method=head", "dist=fsdp"])
    assert "\n" not in str(err.value)
    assert resolve(["method=lora", "dist=fsdp"]).dist == "fsdp"


def test_one_process_leaves_the_model_as_it_is() -> None:
    model = nn.Linear(2, 2)
    none = STRATEGIES["none"]
    assert none.wrap(model) is model and none.eval_model(model) is model
    assert none.shards(4) == 1 and STRATEGIES["fsdp"].shards(4) == 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights, optim = none.full_states(model, optimizer, SINGLE) or ({}, {})
    assert set(weights) == {"weight", "bias"} and "state" in optim
