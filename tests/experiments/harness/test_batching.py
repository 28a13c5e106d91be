"""The training data order: length grouping, resumable positions, rank shares, loss weights."""

from __future__ import annotations

import pytest
import torch

from experiments.harness.batching import (
    IGNORE_INDEX,
    EpochOrder,
    PaddedRows,
    padding_ratio,
)
from experiments.harness.evaluation import eval_batches
from experiments.harness.runtime import Context
from experiments.train import forward_backward


def _lengths(n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(5, 64, (n,), generator=gen)).tolist()


@pytest.mark.parametrize("group", [0, 4])
def test_every_example_once_per_epoch_and_deterministic(group: int) -> None:
    lengths = _lengths(203)
    order = EpochOrder(203, 16, seed=3, lengths=lengths, group=group)
    batches = order.global_batches()
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert [len(b) for b in batches] == [16] * 12 + [11]  # the short batch last
    assert EpochOrder(203, 16, 3, lengths=lengths, group=group).global_batches() == batches
    assert EpochOrder(203, 16, 4, lengths=lengths, group=group).global_batches() != batches
    order.set_position(1)
    assert order.global_batches() != batches  # a new shuffle each epoch


def test_grouping_cuts_padding() -> None:
    lengths = _lengths(2000)
    plain = EpochOrder(2000, 32, 0).global_batches()
    grouped = EpochOrder(2000, 32, 0, lengths=lengths, group=50).global_batches()
    assert padding_ratio(lengths, plain) > 1.5
    assert padding_ratio(lengths, grouped) < 1.05
    # the batch order is shuffled, not long-to-short
    maxima = [max(lengths[i] for i in b) for b in grouped[:-1]]
    assert maxima != sorted(maxima, reverse=True)


def test_resume_position_yields_the_same_tail() -> None:
    lengths = _lengths(100)
    full = list(EpochOrder(100, 8, 1, lengths=lengths, group=3))
    tail = EpochOrder(100, 8, 1, lengths=lengths, group=3)
    tail.set_position(0, 5)
    assert list(tail) == full[5:] and len(tail) == len(full) - 5


def test_ranks_take_equal_steps_and_the_whole_global_batch() -> None:
    """97 rows, batches of 16, 2 ranks: the 1-row last batch gives rank 1 a padding row."""
    shares = [list(EpochOrder(97, 16, 0, rank=r, world=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 7
    glob = EpochOrder(97, 16, 0).global_batches()
    for b, batch in enumerate(glob):
        real = [i for r in range(2) for i in shares[r][b] if i >= 0]
        assert real == batch
    assert shares[1][-1][0] < 0 and len(shares[0][-1]) == 1
    assert EpochOrder(97, 16, 0).global_size(6) == 1


def test_padding_rows_carry_an_ignored_label() -> None:
    data = [{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor(1)}]
    rows = PaddedRows(data)
    assert rows[0]["labels"].item() == 1
    assert rows[-1]["labels"].item() == IGNORE_INDEX
    assert torch.equal(rows[-1]["input_ids"], data[0]["input_ids"])


class _Logits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> object:
        return type("Out", (), {"logits": x @ self.w})()


def test_rank_losses_average_to_the_single_process_mean() -> None:
    """Split 5 rows 3 + 2 over two 'ranks', each dividing by 5/2: DDP's average of their
    gradients is the one-process gradient of the 5-row mean; a padding row adds nothing."""
    torch.manual_seed(0)
    model, ctx = _Logits(), Context(torch.device("cpu"), "fp32")
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    forward_backward(model, {"x": x, "labels": y}, ctx)
    want = model.w.grad.clone()
    grads = []
    for idx in ([0, 1, 2], [3, 4]):
        model.w.grad = None
        forward_backward(model, {"x": x[idx], "labels": y[idx]}, ctx, rows=5 / 2)
        grads.append(model.w.grad.clone())
    torch.testing.assert_close((grads[0] + grads[1]) / 2, want)
    model.w.grad = None
    pad = torch.tensor([IGNORE_INDEX])
    loss = forward_backward(model, {"x": x[:1], "labels": pad}, ctx, rows=0.5)
    assert loss.item() == 0 and not model.w.grad.any()


def test_eval_batches_follow_the_length_order_and_cover_every_example_once() -> None:
    lengths = _lengths(300)
    order = sorted(range(300), key=lambda i: -lengths[i])
    for world in (1, 2):
        seen = []
        for rank in range(world):
            batches, real = eval_batches(300, 64, rank, world, order)
            seen += [i for b, r in zip(batches, real, strict=True) for i in b[:r]]
        assert sorted(seen) == list(range(300))
    batches, _ = eval_batches(300, 64, 0, 1, order)
    plain, _ = eval_batches(300, 64, 0, 1)
    assert padding_ratio(lengths, batches) < 1.2 < 1.5 < padding_ratio(lengths, plain)


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.harness.runtime import pick_precision

    cpu = torch.device("cpu")
    monkeypatch.setenv("TUNEBENCH_CPU_BF16", "1")
    assert pick_precision("auto", cpu) == "bf16-mixed"
    monkeypatch.setenv("TUNEBENCH_CPU_BF16", "0")
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_precision("fp32", cpu) == "fp32"  # an explicit choice always wins
