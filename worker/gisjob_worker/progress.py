"""What a user sees during ``gisjob run``: a rich progress bar on a terminal, JSON log lines
otherwise, and a summary at the end."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .executor import RunResult, Snapshot
from .logs import get_logger
from .quantity import format_bytes


class TerminalProgress:
    """Tiles done/total, workers running, memory in use vs allowance, retries, OOMs, ETA."""

    def __init__(self, title: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task(title, total=total, status="")
        self.progress.start()

    def update(self, s: Snapshot) -> None:
        status = (
            f"workers {s.running}  mem {format_bytes(s.memory_in_use)}/"
            f"{format_bytes(s.allowance)}  retries {s.retries}  OOM {s.oom}"
            + (f"  failed {s.failed}" if s.failed else "")
            + (f"  resumed {s.skipped}" if s.skipped else "")
        )
        self.progress.update(self.task, total=s.total, completed=s.done + s.failed, status=status)

    def event(self, name: str, data: dict[str, Any]) -> None:
        if name in ("failed", "out-of-memory", "split", "forkserver-lost"):
            self.progress.console.log(f"{name}: {data}")

    def close(self) -> None:
        self.progress.stop()


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
