"""The benchmark's chart: events per second of each variant, on a log scale (bench/results/chart.png)."""

from __future__ import annotations

from pathlib import Path


def draw_chart(bars: list[tuple[str, float, bool]], title: str, path: Path) -> None:
    """One horizontal bar per (label, events/s, highlighted), in the given order, written to `path` as PNG."""
    import matplotlib  # noqa: PLC0415 - only needed when writing the chart

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    labels, rates = [label for label, _, _ in bars], [rate for _, rate, _ in bars]
    figure, axes = pyplot.subplots(figsize=(9, 4))
    drawn = axes.barh(labels, rates, color=["#2a7ab9" if highlighted else "#9aa7b1" for _, _, highlighted in bars])
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("events per second (log scale)")
    axes.set_title(title)
    for bar, rate in zip(drawn, rates, strict=True):
        axes.text(bar.get_width() * 1.05, bar.get_y() + bar.get_height() / 2, f"{rate:,.0f}", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
