"""The published FINDINGS and README's headline assert only orderings the corrected paired tests
support."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import orderings, tasks, tasks_page

RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_claimed_orderings_are_read_with_whole_labels() -> None:
    labels = ["head", "lora", "lora r=8 all layers", "full"]
    text = ("head 76.7 < lora r=8 all layers 82.9 < full; full > lora, p < 0.001; "
            "lora ≈ head; full>head")
    assert orderings.claimed_orderings(text, labels) == [
        ("lora r=8 all layers", "head"), ("full", "lora r=8 all layers"), ("full", "lora"),
        ("full", "head")]


def test_a_claim_under_a_tasks_heading_belongs_to_that_task() -> None:
    """A heading that names a task (folder or data, any case, '_' as a space) holds the claims
    under it, and under its subheadings, to that task, until a heading of its level or above."""
    text = ("full > head\n\n## Reuters R8\n\nfull > lora\n\n### Costs\n\nlora > head\n\n"
            "## Overall\n\nlora > head\n\n# newsgroups20-minilm\n\nhead < full\n")
    names = {"reuters_r8-minilm": ["reuters_r8-minilm", "reuters_r8"],
             "newsgroups20-minilm": ["newsgroups20-minilm", "newsgroups20"]}
    assert orderings.task_claims(text, ["full", "head", "lora"], names) == [
        (None, "full", "head"), ("reuters_r8-minilm", "full", "lora"),
        ("reuters_r8-minilm", "lora", "head"), (None, "lora", "head"),
        ("newsgroups20-minilm", "full", "head")]


@pytest.mark.skipif(not (RESULTS / "FINDINGS.md").is_file(),
                    reason="no published multi-task comparison")
def test_multitask_findings_assert_only_orderings_some_task_supports() -> None:
    """results/FINDINGS.md, beside the task folders: every ordering it claims is supported by
    the corrected paired tests of its task (under a task's heading) or of some task."""
    found = tasks.split(tasks.load_runs(RESULTS))
    text = (RESULTS / "FINDINGS.md").read_text()
    labels = sorted({str(x) for t in found for x in t.agg["label"]})
    assert orderings.claimed_orderings(text, labels), (
        "FINDINGS states no ordering in the tables' names: the check would be empty")
    unsupported = tasks_page.findings_problems(found, text)
    assert not unsupported, f"FINDINGS asserts orderings the tests do not support: {unsupported}"


HEADLINE = "**What the comparison found.**"


def test_readme_headline_claims_only_orderings_some_task_supports() -> None:
    """README's headline paragraph states orderings (it must state some, or this checks
    nothing), and each is one the corrected paired tests of some published task support."""
    readme = (RESULTS.parent / "README.md").read_text()
    assert HEADLINE in readme, f"README has no {HEADLINE} paragraph"
    paragraph = readme.split(HEADLINE, 1)[1].split("\n\n", 1)[0]
    found = tasks.split(tasks.load_runs(RESULTS))
    labels = sorted({str(x) for t in found for x in (*t.agg["label"], *tasks.methods([t]))})
    assert orderings.claimed_orderings(paragraph, labels), "the headline claims no ordering"
    unsupported = tasks_page.findings_problems(found, paragraph)
    assert not unsupported, f"README's headline asserts unsupported orderings: {unsupported}"
