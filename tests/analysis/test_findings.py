"""The published FINDINGS asserts only orderings the corrected paired tests support."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import orderings, paired, results

PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "rotten_tomatoes-minilm"


def test_claimed_orderings_are_read_with_whole_labels() -> None:
    labels = ["head", "lora", "lora r=8 all layers", "full"]
    text = ("head 76.7 < lora r=8 all layers 82.9 < full; full > lora, p < 0.001; "
            "lora ≈ head; full>head")
    assert orderings.claimed_orderings(text, labels) == [
        ("lora r=8 all layers", "head"), ("full", "lora r=8 all layers"), ("full", "lora"),
        ("full", "head")]


@pytest.mark.skipif(not (PUBLISHED / "FINDINGS.md").is_file(), reason="no published comparison")
def test_findings_assert_no_ordering_the_tests_call_a_tie() -> None:
    df = results.finished(results.load_records(PUBLISHED))
    agg = results.aggregate(df)
    shown = paired.default_family(paired.comparisons(df, agg), agg)
    supported = orderings.supported(shown)
    claims = orderings.claimed_orderings((PUBLISHED / "FINDINGS.md").read_text(),
                                         list(agg["label"]))
    assert claims, "FINDINGS states no ordering in the table's names: the check would be empty"
    unsupported = [f"{a} > {b}" for a, b in claims if (a, b) not in supported]
    assert not unsupported, f"FINDINGS asserts orderings the tests do not support: {unsupported}"
    tied = orderings.ties(shown)
    assert not [c for c in claims if frozenset(c) in tied]
