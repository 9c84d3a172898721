"""``gisjob run --report DIR``: memory over time per worker (PNG) and summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .executor import Sample


def write_report(folder: Path, summary: dict[str, Any], samples: list[Sample]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    summary_path = folder / "summary.json"
    summary_path.write_text(
        json.dumps({**summary, "samples": [s.__dict__ for s in samples]}, indent=1)
    )
    png = folder / "memory.png"
    plot_memory(samples, png, title=f"{summary['job']}: worker memory over time")
    return [summary_path, png]


def plot_memory(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    series: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        series.setdefault((s.tile, s.attempt), []).append(s)
    mib = 1024**2
    for i, ((tile, attempt), points) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        ts = [p.t for p in points]
        label = f"{tile}" + (f" #{attempt}" if attempt else "")
        ax.plot(ts, [p.rss / mib for p in points], color=color, label=label, linewidth=1.2)
        ax.hlines(
            points[0].request / mib,
            min(ts),
            max(ts),
            colors=color,
            linestyles="dashed",
            linewidth=0.8,
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("resident memory (MiB); dashed: request")
    ax.set_title(title)
    if len(series) <= 16:
        ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
