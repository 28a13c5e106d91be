"""What the paired tests let a report say: the orderings they support, the ties, and seeds that
score alike without predicting alike. RESULTS.md's "Orderings the tests support" comes from here,
and a test holds the hand-written FINDINGS to it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from analysis import paired
from analysis.paired import Comparison, format_p


@dataclass(frozen=True)
class SeedAgreement:
    """A configuration whose seeds score the same accuracy, and how often they still differ."""

    label: str
    accuracy: float
    n: int  # test examples
    disagreements: tuple[tuple[int, int, int], ...]  # (seed, seed, predictions that differ)


def supported(found: list[Comparison]) -> set[tuple[str, str]]:
    """(better, worse) label pairs whose difference survives Holm (adjusted p < 0.05)."""
    out = set()
    for c in found:
        if c.result == ">":
            out.add((c.a, c.b))
        elif c.result == "<":
            out.add((c.b, c.a))
    return out


def ties(found: list[Comparison]) -> set[frozenset[str]]:
    """Label pairs the tests call a tie (adjusted p >= 0.05)."""
    return {frozenset((c.a, c.b)) for c in found if c.result == "≈"}


def seed_agreements(df: pd.DataFrame, agg: pd.DataFrame) -> list[SeedAgreement]:
    """Configurations with two or more seeds of exactly equal test accuracy, with the number of
    test predictions each pair of those seeds disagrees on ('± 0.0' is not 'the same model')."""
    out = []
    for _, row in agg.iterrows():
        runs = paired.seed_predictions(df, row["config_hash"], lambda _: None)
        if len(runs) < 2:
            continue
        hits = {s: int((r["predicted"] == r["label"]).sum()) for s, r in runs.items()}
        if len(set(hits.values())) != 1:
            continue
        pairs = tuple((s, t, int((runs[s]["predicted"] != runs[t]["predicted"]).sum()))
                      for s, t in itertools.combinations(sorted(runs), 2)
                      if runs[s].index.equals(runs[t].index))
        n = len(next(iter(runs.values())))
        out.append(SeedAgreement(str(row["label"]), next(iter(hits.values())) / n, n, pairs))
    return out


def agreement_line(a: SeedAgreement) -> str:
    """'head: its 3 seeds score 76.7% each yet disagree on 20, 16 and 12 of 1,275 ...'."""
    counts = [str(d) for _, _, d in a.disagreements]
    said = counts[0] if len(counts) == 1 else ", ".join(counts[:-1]) + " and " + counts[-1]
    pairs = ", ".join(f"{s}–{t}" for s, t, _ in a.disagreements)
    seeds = len({s for s, _, _ in a.disagreements} | {t for _, t, _ in a.disagreements})
    return (f"{a.label}: its {seeds} seeds score {100 * a.accuracy:.1f}% each, yet disagree on "
            f"{said} of the {a.n:,} test predictions (seed pairs {pairs}): equal counts, not "
            "identical models.")


def _group(found: list[Comparison], ref: str) -> list[str]:
    """One reference's line: who is above it, below it, level with it."""
    rows = [c for c in found if c.b == ref]
    if not rows:
        return []
    parts = []
    for word, sign in (("above", ">"), ("below", "<"), ("level with it (≈)", "≈")):
        names = [f"{c.a} ({paired.signed_points(c.diff)} pt, Holm {format_p(c.p_adjusted)})"
                 if sign != "≈" else c.a for c in rows if c.result == sign]
        parts.append(f"{word}: {'; '.join(names) if names else 'none'}")
    return [f"- Against **{ref}**: " + ". ".join(parts) + "."]


def section(found: list[Comparison], agreements: list[SeedAgreement]) -> list[str]:
    """The generated 'Orderings the tests support' section of RESULTS.md (Markdown lines)."""
    lines = ["## Orderings the tests support", "",
             f"Generated from the paired table above (Holm over its {len(found)} comparisons): "
             "an ordering is stated only where its adjusted p is below 0.05; the rest are ties "
             "(≈), which these data cannot order either way.", ""]
    for ref in dict.fromkeys(c.b for c in found):
        lines += _group(found, ref)
    if not supported(found):
        lines.append("- No difference in the table survives the correction.")
    if agreements:
        lines += ["", "Seeds with equal accuracy:", ""]
        lines += [f"- {agreement_line(a)}" for a in agreements]
    return [*lines, ""]


def claimed_orderings(text: str, labels: list[str]) -> list[tuple[str, str]]:
    """(better, worse) for every 'A < B' or 'A > B' in text whose sides are configuration
    labels (an accuracy may follow a label: 'head 76.7 < full 83.8'). Longest labels first,
    so 'lora r=8 α=16 all layers' is not read as 'lora'."""
    names = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    side = rf"(?<![\w=])({names})(?:\s+\d+(?:\.\d+)?%?)?"
    pattern = re.compile(rf"{side}\s*([<>])\s*(?=({names})(?![\w=]))")
    out = []
    for m in pattern.finditer(text):
        left, sign, right = m.group(1), m.group(2), m.group(3)
        out.append((left, right) if sign == ">" else (right, left))
    return out


def _words(text: str) -> str:
    """Lower case, '_' and '-' as spaces: 'Reuters R8' finds the task reuters_r8-minilm."""
    return re.sub(r"[_\-\s]+", " ", text.lower())


def task_claims(text: str, labels: list[str],
                names: Mapping[str, Iterable[str]]) -> list[tuple[str | None, str, str]]:
    """(task, better, worse) for every claimed ordering in a multi-task FINDINGS: a claim under
    a Markdown heading that names a task (`names`: task -> its names, e.g. folder and data)
    belongs to that task, as do claims under its subheadings; elsewhere the task is None."""
    out: list[tuple[str | None, str, str]] = []
    scope: tuple[int, str | None] = (0, None)  # (heading level, task) in force
    for part in re.split(r"(?m)^(?=#)", text):
        heading = part.splitlines()[0] if part.startswith("#") else ""
        if heading:
            level = len(heading) - len(heading.lstrip("#"))
            named = [t for t, words in names.items()
                     if any(_words(w) in _words(heading) for w in words)]
            if named:
                scope = (level, named[0])
            elif level <= scope[0]:
                scope = (0, None)
        out += [(scope[1], a, b) for a, b in claimed_orderings(part, labels)]
    return out


def unsupported_claims(text: str, backing: Mapping[str, set[tuple[str, str]]],
                       labels: Iterable[str], names: Mapping[str, Iterable[str]]) -> list[str]:
    """The orderings a multi-task FINDINGS claims that the tests do not support: a claim held to
    a task (`task_claims`) needs that task's supported (better, worse) pairs (`backing`: task ->
    `supported` of its default family) to hold it, any other claim some task's; `labels`: every
    name a claim may use. [] when every claim is supported."""
    out = []
    for task, better, worse in task_claims(text, sorted(set(labels)), names):
        scope = [task] if task is not None else list(backing)
        if not any((better, worse) in backing.get(t, set()) for t in scope):
            out.append(f"{better} > {worse} ({'on ' + task if task else 'on no task'})")
    return out
