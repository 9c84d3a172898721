"""What a user sees during ``gisjob run``: a rich progress bar on a terminal, JSON log lines
otherwise, and a summary at the end."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from .logs import get_logger
from .quantity import format_bytes
from .runtypes import RunResult, Snapshot

BAR_MIN = 10  # a narrower bar says nothing: the layout drops it instead
BAR_MAX = 40
TITLE_MAX = 24
GAP = "  "


def clock(seconds: float | None) -> str:
    """``M:SS`` under an hour, ``H:MM:SS`` above; ``-:--`` when unknown."""
    if seconds is None:
        return "-:--"
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def short_bytes(n: int) -> str:
    """A compact binary size for narrow lines: ``430Mi``, ``17Gi``, ``1.5Gi``."""
    value = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            text = f"{value:.1f}" if value < 10 and unit else f"{value:.0f}"
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def eta_seconds(s: Snapshot, elapsed: float) -> float | None:
    """Time left at the pace of the tiles this run finished (resumed tiles cost nothing)."""
    left = s.total - s.done - s.failed
    if left <= 0:
        return 0.0
    finished = s.done + s.failed - s.skipped
    if finished <= 0 or elapsed <= 0:
        return None
    return left * elapsed / finished


def layout(s: Snapshot, title: str, elapsed: float, width: int) -> list[tuple[str, str]]:
    """The progress line as (text, style) segments that fit ``width`` columns.

    Done/total, failed, elapsed and ETA are always there. What does not fit goes in this
    order: the bar shrinks (to :data:`BAR_MIN`), zero retry/OOM counters, the memory text
    shortens, the bar, the worker count, the memory, the title, then non-zero counters. A bar
    segment's text is its width as digits (the caller draws it)."""
    if len(title) > TITLE_MAX:
        title = title[: TITLE_MAX - 1] + "…"
    essentials = [
        (f"{s.done + s.failed}/{s.total}", "bold"),
        (f"failed {s.failed}", "bold red" if s.failed else ""),
    ]
    times = [(f"{clock(elapsed)} ETA {clock(eta_seconds(s, elapsed))}", "")]
    mem_long = f"mem {format_bytes(s.memory_in_use)}/{format_bytes(s.allowance)}"
    mem_short = f"mem {short_bytes(s.memory_in_use)}/{short_bytes(s.allowance)}"
    # (text, style, shown when zero too (at full width), non-zero)
    counters = [
        (f"retries {s.retries}", "yellow" if s.retries else "", True, s.retries > 0),
        (f"OOM {s.oom}", "yellow" if s.oom else "", True, s.oom > 0),
        (f"resumed {s.skipped}", "", False, s.skipped > 0),
    ]
    # (title, bar, workers, memory text, counters to show)
    steps: list[tuple[bool, bool, bool, str | None, str]] = [
        (True, True, True, mem_long, "all"),
        (True, True, True, mem_long, "nonzero"),
        (True, True, True, mem_short, "nonzero"),
        (True, False, True, mem_short, "nonzero"),
        (True, False, False, mem_short, "nonzero"),
        (True, False, False, None, "nonzero"),
        (False, False, False, None, "nonzero"),
        (False, False, False, None, "none"),
    ]
    for show_title, bar, workers, mem, which in steps:
        shown = [
            (text, style)
            for text, style, always, nonzero in counters
            if (which == "all" and always) or (which != "none" and nonzero)
        ]
        segments: list[tuple[str, str]] = []
        if show_title:
            segments.append((title, "bold"))
        bar_at = len(segments)
        segments += essentials
        if workers:
            segments.append((f"workers {s.running}", ""))
        if mem and s.allowance > 0:  # no memory figures before the first update
            segments.append((mem, ""))
        segments += shown + times
        used = sum(len(t) for t, _ in segments) + len(GAP) * (len(segments) - 1)
        if not bar:
            if used <= width:
                return segments
            continue
        room = width - used - len(GAP)
        if room >= BAR_MIN:
            segments.insert(bar_at, (str(min(BAR_MAX, room)), "bar"))
            return segments
    return segments  # essentials only: the terminal is narrower than they are


class ProgressLine:
    """The progress line as a rich renderable, laid out for the width it is given."""

    def __init__(self, title: str, total: int, started: float | None = None) -> None:
        self.title = title
        self.started = time.monotonic() if started is None else started
        self.snapshot = Snapshot(
            total=total,
            done=0,
            failed=0,
            running=0,
            memory_in_use=0,
            allowance=0,
            retries=0,
            oom=0,
            skipped=0,
        )

    def render(self, width: int) -> Any:
        from rich.text import Text

        s = self.snapshot
        line = Text(no_wrap=True, overflow="ellipsis")
        segments = layout(s, self.title, time.monotonic() - self.started, width)
        for i, (text, style) in enumerate(segments):
            if i:
                line.append(GAP)
            if style == "bar":
                bar = int(text)
                filled = round(bar * (s.done + s.failed) / s.total) if s.total else bar
                line.append("━" * filled, style="red" if s.failed else "green")
                line.append("━" * (bar - filled), style="grey23")
            else:
                line.append(text, style=style)
        return line

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.render(options.max_width)


class TerminalProgress:
    """One line: tiles done/total, failed, workers, memory in use vs allowance, retries,
    OOMs, elapsed and ETA, laid out for the terminal's width (:func:`layout`)."""

    def __init__(self, title: str, total: int) -> None:
        from rich.console import Console
        from rich.live import Live

        self.line = ProgressLine(title, total)
        self.console = Console(stderr=True)
        self.live = Live(self.line, console=self.console, refresh_per_second=4)
        self.live.start()

    def update(self, s: Snapshot) -> None:
        self.line.snapshot = s

    def event(self, name: str, data: dict[str, Any]) -> None:
        if name in ("failed", "out-of-memory", "split", "forkserver-lost"):
            self.console.log(f"{name}: {data}")

    def close(self) -> None:
        self.live.stop()


class LogProgress:
    """Off a terminal: one JSON log line per event, and a progress line every few tiles."""

    def __init__(self, title: str, total: int) -> None:
        self.log = get_logger(job=title)
        self.last_done = -1

    def update(self, s: Snapshot) -> None:
        if s.done + s.failed != self.last_done:
            self.last_done = s.done + s.failed
            self.log.info(
                "progress",
                done=s.done,
                failed=s.failed,
                total=s.total,
                running=s.running,
                memory_in_use=s.memory_in_use,
                allowance=s.allowance,
                retries=s.retries,
                oom=s.oom,
            )

    def event(self, name: str, data: dict[str, Any]) -> None:
        self.log.info(name, **data)

    def close(self) -> None:
        pass


def make_progress(title: str, total: int) -> TerminalProgress | LogProgress:
    return TerminalProgress(title, total) if sys.stderr.isatty() else LogProgress(title, total)


def summarize(result: RunResult) -> dict[str, Any]:
    """The numbers of the end-of-run summary (also the report's summary.json)."""
    runs = [r for r in result.runs.values() if r.state != "split"]
    measured = []
    for r in runs:
        if r.state == "succeeded" and not r.resumed and r.records:
            rec = r.records[-1]
            if rec.get("peakRssBytes") and rec.get("estimatedPeakBytes"):
                measured.append(
                    (
                        r.tile.id,
                        rec["peakRssBytes"],
                        rec["estimatedPeakBytes"],
                        rec.get("memory", r.tile.memory_request_bytes),
                    )
                )
    ratios = [est / peak for _, peak, est, _ in measured]
    largest = max(measured, key=lambda m: m[1], default=None)
    strategies: dict[str, int] = {}
    for r in result.runs.values():
        for rec in r.records:
            s = rec.get("strategy")
            if s in ("shrinkChunks", "grow"):
                strategies[s] = strategies.get(s, 0) + 1
        if r.state == "split":
            strategies["split"] = strategies.get("split", 0) + 1
    return {
        "job": result.plan.job,
        "digest": result.plan.digest,
        "outcome": result.manifest["outcome"],
        "tiles": len(runs),
        "succeeded": sum(1 for r in runs if r.state == "succeeded"),
        "failed": sum(1 for r in runs if r.state == "failed"),
        "resumed": sum(1 for r in runs if r.resumed),
        "seconds": round(result.seconds, 3),
        "retries": sum(
            1 for r in result.runs.values() for rec in r.records if rec.get("strategy") == "retry"
        ),
        "oomRecoveries": strategies,
        "largestPeak": {
            "tile": largest[0],
            "peakRssBytes": largest[1],
            "memoryRequestBytes": largest[3],
        }
        if largest
        else None,
        "overPrediction": {
            "min": round(min(ratios), 3),
            "median": round(statistics.median(ratios), 3),
            "max": round(max(ratios), 3),
        }
        if ratios
        else None,
        "underPredictedTiles": [m[0] for m in measured if m[1] > m[2]],
    }


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['job']}: {summary['outcome']}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "tiles",
        f"{summary['succeeded']}/{summary['tiles']} succeeded"
        + (f", {summary['failed']} failed" if summary["failed"] else "")
        + (f", {summary['resumed']} resumed" if summary["resumed"] else ""),
    )
    table.add_row("time", f"{summary['seconds']:.1f} s")
    table.add_row("retries", str(summary["retries"]))
    rec = summary["oomRecoveries"]
    table.add_row("OOM recoveries", ", ".join(f"{k} {v}" for k, v in rec.items()) or "none")
    big = summary["largestPeak"]
    if big:
        table.add_row(
            "largest peak",
            f"{format_bytes(big['peakRssBytes'])} of "
            f"{format_bytes(big['memoryRequestBytes'])} requested ({big['tile']})",
        )
    over = summary["overPrediction"]
    if over:
        table.add_row(
            "model over-prediction",
            f"median {over['median']:.2f}x (min {over['min']:.2f}x, max {over['max']:.2f}x)",
        )
    Console(stderr=True).print(table)
