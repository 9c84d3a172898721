"""``gisjob run --report DIR``: memory over time (PNG) and summary.json.

``memory.png`` has two panels sharing the time axis:

- per tile attempt: its resident memory as sampled by the runner (one colour each, still
  distinct past 10 and 20 tiles), its memory request (dashed), and the peak its worker
  reported (a marker: the sampled line can miss a short spike, the marker is the number the
  summary and the manifest give); the largest reported peak is labelled;
- the whole run: resident memory of all workers together, the sum of their requests, and the
  allowance they are packed into.

Legends sit outside the data, to the right.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .runtypes import Sample

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runtypes import TileRun

MIB = 1024**2
LEGEND_MAX = 40  # more tile attempts than this: a colour bar instead of legend entries
SAMPLE_HALF = 0.125  # a request line spans its samples and half the runner's sampling interval
LOG_ABOVE = 4  # the run panel is log-scaled when the allowance is this many times its use


@dataclass(frozen=True)
class TilePeak:
    """The peak resident memory one attempt's worker reported."""

    tile: str
    attempt: int
    peakRssBytes: int  # noqa: N815 - the result record's name


def reported_peaks(runs: Mapping[str, TileRun]) -> list[TilePeak]:
    """Every attempt that reported a peak, from the runner's records (resumed tiles ran in
    an earlier run and have no samples here: left out)."""
    peaks: list[TilePeak] = []
    for run in runs.values():
        if run.resumed:
            continue
        for rec in run.records:
            peak = rec.get("peakRssBytes")
            if isinstance(peak, int) and peak > 0:
                peaks.append(TilePeak(run.tile.id, int(rec.get("attempt", 0)), peak))
    return sorted(peaks, key=lambda p: (p.tile, p.attempt))


def write_report(
    folder: Path,
    summary: dict[str, Any],
    samples: list[Sample],
    *,
    peaks: Iterable[TilePeak] = (),
    allowance: int | None = None,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    peaks = list(peaks)
    summary_path = folder / "summary.json"
    summary_path.write_text(
        json.dumps(
            {
                **summary,
                "allowanceBytes": allowance,
                "tilePeaks": [asdict(p) for p in peaks],
                "samples": [s.__dict__ for s in samples],
            },
            indent=1,
        )
    )
    png = folder / "memory.png"
    plot_memory(
        samples,
        png,
        title=f"{summary['job']}: memory over time",
        peaks=peaks,
        allowance=allowance,
        largest=summary.get("largestPeak"),
    )
    return [summary_path, png]


def series_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours a reader can tell apart: tab10, tab20, then evenly spaced along a
    perceptually ordered colour map (neighbours in time get neighbouring hues)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def memory_figure(
    samples: list[Sample],
    title: str,
    *,
    peaks: Iterable[TilePeak] = (),
    allowance: int | None = None,
    largest: dict[str, Any] | None = None,
) -> Figure:
    """The report's figure (not saved): ``axes[0]`` per tile attempt, ``axes[1]`` the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    series: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        series.setdefault((s.tile, s.attempt), []).append(s)
    keys = sorted(series)
    colors = dict(zip(keys, series_colors(len(keys)), strict=True))
    reported = {(p.tile, p.attempt): p.peakRssBytes for p in peaks}

    fig, (ax, total_ax) = plt.subplots(
        2,
        1,
        figsize=(12, 7),
        dpi=100,
        sharex=True,
        height_ratios=(3, 2),
        layout="constrained",
    )
    fig.suptitle(title)
    for key in keys:
        points = series[key]
        tile, attempt = key
        color = colors[key]
        ts = [p.t for p in points]
        label = tile + (f" #{attempt}" if attempt else "")
        ax.plot(
            ts,
            [p.rss / MIB for p in points],
            color=color,
            label=label,
            linewidth=1.2,
            marker="." if len(points) < 3 else None,  # a line of one sample is invisible
        )
        ax.hlines(
            points[0].request / MIB,
            min(ts) - SAMPLE_HALF,
            max(ts) + SAMPLE_HALF,
            colors=[color],
            linestyles="dashed",
            linewidth=0.8,
        )
        peak = reported.get(key)
        if peak is not None:
            at = max(points, key=lambda p: p.rss).t
            ax.plot(
                [at],
                [peak / MIB],
                marker="v",
                markersize=7,
                color=color,
                markeredgecolor="black",
                linestyle="none",
                gid=f"peak:{tile}:{attempt}",
            )
            if largest and largest.get("tile") == tile and largest.get("peakRssBytes") == peak:
                ax.annotate(
                    f"largest peak {peak / MIB:.1f} MiB ({label})",
                    (at, peak / MIB),
                    xytext=(6, 6),
                    textcoords="offset points",
                    fontsize="small",
                )
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("per tile: resident memory, request (dashed), reported peak (▼)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(keys) <= LEGEND_MAX:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            fontsize="small",
            ncol=1 if len(keys) <= 20 else 2,
            title="tile",
        )
    elif keys:
        bar = fig.colorbar(
            ScalarMappable(Normalize(0, len(keys) - 1), ListedColormap([colors[k] for k in keys])),
            ax=ax,
            ticks=[0, len(keys) - 1],
        )
        bar.ax.set_yticklabels([keys[0][0], keys[-1][0]])
        bar.set_label(f"{len(keys)} tile attempts, in tile order")

    times = sorted({s.t for s in samples})
    rss_at: dict[float, int] = dict.fromkeys(times, 0)
    req_at: dict[float, int] = dict.fromkeys(times, 0)
    for s in samples:
        rss_at[s.t] += s.rss
        req_at[s.t] += s.request
    total_ax.plot(
        times,
        [rss_at[t] / MIB for t in times],
        color="black",
        linewidth=1.4,
        label="resident, all workers",
        gid="total-resident",
    )
    total_ax.step(
        times,
        [req_at[t] / MIB for t in times],
        where="post",
        color="tab:blue",
        linestyle="dashed",
        linewidth=1.0,
        label="requested, all workers",
        gid="total-requested",
    )
    if allowance:
        total_ax.axhline(
            allowance / MIB, color="tab:red", linewidth=1.2, label="allowance", gid="allowance"
        )
    busiest = max([*rss_at.values(), *req_at.values()], default=0)
    log = bool(allowance and busiest and allowance > LOG_ABOVE * busiest)
    if log:  # an allowance far above the use would flatten the use to the axis
        total_ax.set_yscale("log")
    total_ax.set_xlabel("seconds since start")
    total_ax.set_ylabel("memory (MiB" + (", log scale)" if log else ")"))
    total_ax.set_title("the run: memory in use and the allowance", fontsize=10)
    total_ax.grid(alpha=0.3)
    total_ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small"
    )
    return fig


def plot_memory(
    samples: list[Sample],
    path: Path,
    title: str,
    *,
    peaks: Iterable[TilePeak] = (),
    allowance: int | None = None,
    largest: dict[str, Any] | None = None,
) -> None:
    fig = memory_figure(samples, title, peaks=peaks, allowance=allowance, largest=largest)
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
