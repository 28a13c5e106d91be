"""The figures and summary.md: every plot kind is written, readable, and consistent in colour."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from analysis import plots, results  # noqa: E402
from analysis.style import (  # noqa: E402
    BytesLocator,
    Log2BytesLocator,
    human_bytes,
    method_color,
    method_text_color,
)
from experiments.contract import record as R  # noqa: E402

BASIC = ("accuracy_vs_params", "accuracy_vs_memory", "accuracy_vs_time", "memory_breakdown",
         "time_throughput", "val_curves")


def _texts(fig: Figure) -> list[tuple[str, object]]:
    """Every text that is drawn: tick labels only where the tick lies inside the view."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tick_labels, shown = set(), []
    axes = [*fig.axes, *(child for ax in fig.axes for child in ax.child_axes)]
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for label in (tick.label1, tick.label2):
                    tick_labels.add(id(label))
                    if label.get_visible() and lo - slack <= tick.get_loc() <= hi + slack:
                        shown.append(label)
    others = [t for t in fig.findobj(Text) if id(t) not in tick_labels and t.get_visible()]
    # Text.get_window_extent: a direct label's box without its leader line (Annotation adds it).
    return [(t.get_text(), Text.get_window_extent(t, renderer)) for t in shown + others
            if t.get_text().strip()]


def overlapping_text(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible text items whose boxes overlap by more than a pixel."""
    pairs = []
    for (a, box_a), (b, box_b) in itertools.combinations(_texts(fig), 2):
        dx = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        dy = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if dx > 1 and dy > 1:
            pairs.append((a, b))
    return pairs


@pytest.fixture
def sweep_runs(runs_copy: Path, make_record, ledger) -> Path:  # noqa: ANN001
    """Real runs plus synthetic LoRA rank sweeps (two target sets) with measured memory, and
    two records from older harnesses: a ledger without the measured step, and only RSS growth."""
    n = 1_010_370
    for targets, base in (("all", 0.70), ("attention", 0.66)):
        for rank in (2, 8, 32):
            for seed in (0, 1, 2):
                m = 66 + rank * 2000
                make_record(runs_copy, "lora", seed, base + 0.01 * rank ** 0.5 + 0.005 * seed,
                            config={"lora": {"rank": rank, "alpha": 16, "targets": targets}},
                            memory=ledger(n, m))
    measured = (R.MEASURED_PEAK_BYTES, R.MEASURED_AT_PEAK, R.MEASURED_STATE_PEAK_BYTES,
                R.MEASURED_METHOD, R.STATE_VS_PREDICTED)
    old_ledger = {k: v for k, v in ledger(n, 706).items() if k not in measured}
    make_record(runs_copy, "soft_prompt", 0, 0.6, config={"soft_prompt": {"prompt_length": 20}},
                memory={**old_ledger, R.PEAK_BYTES: 30_000_000,
                        R.PEAK_METHOD: "CPU resident-set growth (approximate)"})
    # A record from before the memory ledger: only the process's RSS growth.
    make_record(runs_copy, "embedding", 0, 0.62, memory={R.PEAK_BYTES: 9_000_000,
                                                         R.PEAK_METHOD: "sampled RSS"})
    return runs_copy


def test_real_runs_give_every_basic_plot_and_the_summary(real_runs: Path, tmp_path: Path) -> None:
    (tmp_path / "accuracy_vs_rank.png").write_bytes(b"from an earlier sweep")
    written = plots.write_reports(results.load_records(real_runs), tmp_path, "test runs")
    names = {p.name for p in written}
    for name in BASIC:
        assert {f"{name}.png", f"{name}.svg"} <= names, name
        image = mpimg.imread(tmp_path / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert len({tuple(px) for px in image[::7, ::7].reshape(-1, image.shape[2])}) > 20
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert "accuracy_vs_rank.png" not in names  # no LoRA rank sweep among these runs
    assert not (tmp_path / "accuracy_vs_rank.png").exists()  # so no stale figure either
    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith(("| head |", "| full |"))]
    assert len(rows) == 2 and all(" ± " in row for row in rows)
    # The paired test of the two, where the harness wrote per-example predictions.
    has_predictions = any(real_runs.glob(f"*/{R.PREDICTIONS_FILE}"))
    assert ("\n| head vs full | " in summary) == has_predictions
    # binary runs: F1 of class 1, macro-F1 (recorded on every task) and Matthews correlation
    # beside accuracy
    assert ("| method | n | test accuracy (%) | test F1 (%) | macro-F1 (%) | test MCC | "
            "trainable params | % of total |") in summary
    assert "![val_curves](val_curves.png)" in summary


def test_ledger_and_rank_sweep_plots(sweep_runs: Path, tmp_path: Path) -> None:
    df = results.load_records(sweep_runs)
    agg = results.aggregate(results.finished(df))
    figs = plots.figures(agg)
    try:
        assert set(figs) == {*BASIC, "accuracy_vs_rank"}
        sweeps = plots.rank_sweeps(agg)
        # The sweep of LoRA's main experiment (all layers) is plain `lora`, a variant's names
        # what it changes, as configurations are labelled.
        assert set(sweeps) == {"lora", "lora attention"}
        assert list(sweeps["lora"][plots.RANK]) == [2, 8, 32]
        legend = [t.get_text() for t in figs["memory_breakdown"].legends[0].get_texts()]
        # What was live at each measured peak, by category in stacking order (the soft prompt's
        # older record adds its ledger's gradients); categories nobody has are left out.
        assert legend[:6] == ["weights", "gradients", "optimizer state", "activations",
                              "temporaries", "buffers, inputs, weight casts"]
        assert "optimizer temporaries" not in legend  # zero in every record
        assert not [t for t in legend if t.endswith((".min", ".max", ".std", ".ci95"))]
        assert "predicted (formula)" in legend
        assert "measured step peak (mean; bar: range over seeds)" in legend
        # The soft prompt's record predates the measured step: its ledger is drawn hatched,
        # and the legend says so; the embedding's has no memory figures: said on the plot.
        assert "ledger count (no measured step in record)" in legend
        texts = [t.get_text() for t in figs["memory_breakdown"].axes[0].texts]
        assert texts == ["no memory measurement in record"]
        # Neither older record is placed on the memory axis by its RSS growth.
        title = figs["accuracy_vs_memory"].legends[0].get_title().get_text()
        assert "not placed (no measured peak in the record): soft_prompt, embedding" in title
        memory_ax = figs["accuracy_vs_memory"].axes[0]
        xs = [x for line in memory_ax.get_lines() for x in line.get_xdata()]
        assert 9_000_000 not in xs and 30_000_000 not in xs
        rank_legend = [t.get_text() for t in figs["accuracy_vs_rank"].legends[0].get_texts()]
        assert "full (reference)" in rank_legend and "head (reference)" in rank_legend
        summary = plots.write_reports(df, tmp_path)[-1].read_text()
        assert "4N + 16M (fp32 weights; grads and Adam state for M) (soft_prompt, lora)" in summary
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_a_rank_sweep_that_scales_alpha_with_rank_is_one_sweep(
        runs_copy: Path, make_record) -> None:  # noqa: ANN001
    """The published sweep holds alpha/r (alpha = 2r): every rank has its own alpha, so a
    grouping that kept alpha fixed found no sweep and the rank figure went missing."""
    for rank in (1, 8, 64):
        for targets in ("all", "attention") if rank == 8 else ("all",):
            make_record(runs_copy, "lora", 0, 0.7 + 0.01 * rank ** 0.5,
                        config={"lora": {"rank": rank, "alpha": 2 * rank, "targets": targets}})
    agg = results.aggregate(results.finished(results.load_records(runs_copy)))
    sweeps = plots.rank_sweeps(agg)
    assert set(sweeps) == {"lora α/r=2"}, set(sweeps)
    assert list(sweeps["lora α/r=2"][plots.RANK]) == [1, 8, 64]
    assert "accuracy_vs_rank" in plots.figures(agg)


def test_no_text_overlaps_in_any_figure(sweep_runs: Path) -> None:
    agg = results.aggregate(results.finished(results.load_records(sweep_runs)))
    for name, fig in plots.figures(agg).items():
        assert overlapping_text(fig) == [], name
        plt.close(fig)


def test_each_method_keeps_its_hue_and_points_are_labelled_directly(sweep_runs: Path) -> None:
    agg = results.aggregate(results.finished(results.load_records(sweep_runs)))
    figs = plots.figures(agg)
    labels = set(agg["label"])
    for name in ("accuracy_vs_params", "accuracy_vs_memory", "accuracy_vs_time"):
        ax = figs[name].axes[0]
        # Each configuration is named beside its point, in its method's text colour; the
        # legend holds at most the frontier, never one entry per configuration.
        named = {t.get_text().split(" (n=")[0]: t for t in ax.texts}
        placed = labels - ({"soft_prompt", "embedding"} if name == "accuracy_vs_memory"
                           else set())
        assert set(named) == placed, name
        for label, text in named.items():
            method = label.split(" ")[0]
            assert to_hex(text.get_color()) == to_hex(method_text_color(method)), (name, label)
        assert len(figs[name].legends[0].get_texts()) <= 1
    # The LoRA variants: one hue, each its own shade and marker.
    styles = plots.variant_styles(agg)
    lora = [styles[h] for h in agg.loc[agg["method"] == "lora", "config_hash"]]
    assert len({c for c, _, _ in lora}) == len({m for _, m, _ in lora}) == len(lora) == 6
    legend = figs["val_curves"].legends[0]
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        method = text.get_text().split(" ")[0].rstrip(",")
        if method in ("head", "full", "soft_prompt"):  # one configuration: the method's colour
            assert to_hex(handle.get_color()) == to_hex(method_color(method)), method
    ticks = figs["memory_breakdown"].axes[0].get_yticklabels()
    tick_colors = {t.get_text(): to_hex(t.get_color()) for t in ticks}
    assert tick_colors["head"] == to_hex(method_color("head"))
    for fig in figs.values():
        plt.close(fig)


def test_the_frontier_joins_only_configurations_with_the_usual_seed_count(
        runs_copy: Path, make_record, ledger) -> None:  # noqa: ANN001
    """A one-seed configuration that happens to be cheap and lucky is drawn, labelled n=1,
    but the frontier (over the 2-seed configurations here) does not run through it."""
    make_record(runs_copy, "lora", 0, 0.99, config={"lora": {"rank": 2}},
                memory=ledger(1000, 10))
    for method in ("head", "full"):
        for path in runs_copy.glob(f"*{method}*/record.json"):
            rec = json.loads(path.read_text())
            rec[R.MEMORY] = ledger(1_000_000, 1000 if method == "head" else 1_000_000)
            path.write_text(json.dumps(rec))
    agg = results.aggregate(results.finished(results.load_records(runs_copy)))
    fig = plots.accuracy_vs_memory(agg)
    ax = fig.axes[0]
    frontier = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    lucky = float(agg.loc[agg["method"] == "lora", results.MEASURED].iloc[0])
    assert lucky not in set(frontier.get_xdata())
    assert "Pareto frontier of the 2-seed configurations" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.get_text() == "lora (n=1)" for t in ax.texts)
    plt.close(fig)


def test_pareto_front() -> None:
    points = [(10, 0.9), (1, 0.6), (5, 0.8), (6, 0.7), (2, 0.6), (20, 0.85)]
    assert plots.pareto_front(points) == [(1, 0.6), (5, 0.8), (10, 0.9)]
    assert plots.pareto_front([]) == []


def test_byte_axes_use_round_binary_units() -> None:
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(3 * 2**30) == "3.0 GiB"
    ticks = BytesLocator().tick_values(0, 60 * 2**20)
    assert all((t / 2**20) % 10 == 0 for t in ticks)  # 0, 10, 20 ... MiB, not 19.07
    logs = Log2BytesLocator().tick_values(3 * 2**20, 70 * 2**20)
    assert [t / 2**20 for t in logs] == [2, 4, 8, 16, 32, 64, 128]


def test_cli_writes_reports(real_runs: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    assert plots.main([str(real_runs), "--reports-dir", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "summary.md").exists()
    assert "4 runs (4 finished)" in capsys.readouterr().out


def test_cli_says_clearly_when_there_are_no_records(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert plots.main([str(tmp_path / "empty"), "--reports-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no run records found" in err and "make experiment" in err
    assert not (tmp_path / "r").exists()


def test_runs_from_wandb_plot_summarise_and_show(fake_wandb_api, tmp_path: Path) -> None:  # noqa: ANN001
    from analysis import dashboard

    df = results.load_wandb(api=fake_wandb_api)
    names = {p.name for p in plots.write_reports(df, tmp_path, "W&B project ent/proj")}
    # W&B holds config, summary and curves: the plots those support are drawn, the rest skipped.
    assert {"accuracy_vs_params.png", "accuracy_vs_memory.png", "memory_breakdown.png",
            "time_throughput.png", "val_curves.png", "summary.md"} <= names
    assert "| lora | 1 | 81.0 |" in (tmp_path / "summary.md").read_text()
    page = dashboard.build_html(df, "W&B")
    assert page.count("<tr class='run ") == 2
    assert "https://wandb.ai/ent/proj/runs/20260101-lora-aa" in page


def test_a_published_comparison_gets_a_results_page_regenerated_identically(
        runs_copy: Path, tmp_path: Path) -> None:
    """With a FINDINGS.md beside the records, `make plots` writes RESULTS.md: the records'
    table and paired tests, the findings verbatim, the figures; twice gives the same bytes
    (but the date) and the same figures, PNG and SVG."""
    from analysis.plots import main

    (runs_copy / "FINDINGS.md").write_text("LoRA matched full fine-tuning within 1 point.\n")
    first, second = tmp_path / "a", tmp_path / "b"
    assert main([str(runs_copy), "--reports-dir", str(first)]) == 0
    assert main([str(runs_copy), "--reports-dir", str(second)]) == 0
    page = (first / "RESULTS.md").read_text()
    assert "LoRA matched full fine-tuning within 1 point." in page
    assert "| method | n | test accuracy (%)" in page and "![" in page
    undated = [[line for line in (d / "RESULTS.md").read_text().splitlines()
                if not line.startswith("Generated by")] for d in (first, second)]
    assert undated[0] == undated[1]
    # Its figures live in reports/results/, where plots of one's own runs never write.
    assert not list(first.glob("*.png")) and "](results/" in page
    figures = [*first.glob("results/*.png"), *first.glob("results/*.svg")]
    assert any(f.suffix == ".svg" for f in figures)  # SVG ids are random unless salted
    for fig in figures:
        assert (second / "results" / fig.name).is_file(), fig.name
        assert fig.read_bytes() == (second / "results" / fig.name).read_bytes(), fig.name
    (runs_copy / "FINDINGS.md").unlink()
    assert main([str(runs_copy), "--reports-dir", str(first)]) == 0
    assert list(first.glob("*.png"))  # ordinary runs: figures and summary.md in reports/
    assert [f.read_bytes() for f in figures] == [
        (second / "results" / f.name).read_bytes() for f in figures]  # published ones kept
    assert main([str(runs_copy), "--reports-dir", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / "RESULTS.md").exists()  # ordinary runs: summary.md only
