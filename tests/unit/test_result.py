"""The worker's result record: at most 4 KiB of JSON, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gisjob_worker.result import MAX_BYTES, ResultRecord, write_result


def record(**kw: object) -> ResultRecord:
    base: dict[str, object] = {
        "tile": "i0001-r0002c0003-q1",
        "outcome": "succeeded",
        "exitCode": 0,
        "peakRssBytes": 187_654_321,
        "cgroupPeakBytes": 201_000_000,
        "memoryBudgetBytes": 314_572_800,
        "estimatedPeakBytes": 219_475_405,
        "chunks": 12,
        "bytesRead": 8_388_608,
        "bytesWritten": 4_194_304,
        "seconds": 1.25,
        "output": "/data/out/tiles/i0001-r0002c0003-q1.tif",
    }
    base.update(kw)
    return ResultRecord(**base)  # type: ignore[arg-type]


def test_to_json_is_compact_camel_case_without_nulls() -> None:
    text = record(cgroupPeakBytes=None).to_json()
    data = json.loads(text)
    assert data == {
        "tile": "i0001-r0002c0003-q1",
        "outcome": "succeeded",
        "exitCode": 0,
        "peakRssBytes": 187_654_321,
        "memoryBudgetBytes": 314_572_800,
        "estimatedPeakBytes": 219_475_405,
        "chunks": 12,
        "bytesRead": 8_388_608,
        "bytesWritten": 4_194_304,
        "seconds": 1.25,
        "output": "/data/out/tiles/i0001-r0002c0003-q1.tif",
    }
    assert " " not in text
    assert "\n" not in text


def test_round_trip() -> None:
    rec = record(outcome="memory", exitCode=3, error="chunk needs 300 MiB")
    again = ResultRecord.from_json(rec.to_json())
    assert again == rec
    assert again.error == "chunk needs 300 MiB"


def test_from_json_ignores_unknown_keys() -> None:
    text = json.dumps(
        {"tile": "r0000c0000", "outcome": "error", "exitCode": 1, "peakRssBytes": 5, "new": 1}
    )
    rec = ResultRecord.from_json(text)
    assert rec == ResultRecord(tile="r0000c0000", outcome="error", exitCode=1, peakRssBytes=5)


@pytest.mark.parametrize(
    "error",
    [
        "x" * 100_000,
        'Traceback (most recent call last):\n  File "w.py", line 1\n' * 2000,
        "\u00fcber \u20ac \U0001f600 " * 5000,  # escaped by json.dumps: up to 12 bytes/char
        '"\\' * 10_000,
    ],
)
def test_to_json_stays_within_4_kib_with_a_huge_error(error: str) -> None:
    rec = record(outcome="error", exitCode=1, error=error)
    text = rec.to_json()
    assert len(text.encode("utf-8")) <= MAX_BYTES
    data = json.loads(text)
    assert data["error"].endswith("...")
    assert error.startswith(data["error"][:-3])
    # everything else survives the truncation
    assert data["tile"] == rec.tile
    assert data["peakRssBytes"] == rec.peakRssBytes
    assert data["output"] == rec.output


def test_small_error_is_not_truncated() -> None:
    rec = record(outcome="error", exitCode=1, error="boom")
    assert json.loads(rec.to_json())["error"] == "boom"


def test_error_truncated_to_just_fit() -> None:
    rec = record(outcome="error", exitCode=1, error="y" * 10_000)
    text = rec.to_json()
    assert MAX_BYTES - 8 <= len(text.encode()) <= MAX_BYTES


def test_escaped_error_keeps_what_fits() -> None:
    rec = record(outcome="error", exitCode=1, error="\u00fcber-\u20ac " * 3000)
    text = rec.to_json()
    assert len(text.encode()) <= MAX_BYTES
    assert len(json.loads(text)["error"]) > 300


def test_to_json_within_limit_with_long_output_uri() -> None:
    rec = record(outcome="error", exitCode=1, output="s3://bucket/" + "d/" * 2100, error="e")
    assert len(rec.to_json().encode()) <= MAX_BYTES


# ------------------------------------------------------------------------ writing


def test_write_result_creates_file_and_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "termination-log"
    rec = record()
    write_result(rec, path)
    assert ResultRecord.from_json(path.read_text()) == rec
    assert sorted(p.name for p in path.parent.iterdir()) == ["termination-log"]


def test_write_result_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_result(record(chunks=1), path)
    old_inode = path.stat().st_ino
    with open(path, encoding="utf-8") as held:  # a reader holding the old file
        write_result(record(chunks=2), path)
        # the old file was replaced by rename, not rewritten in place
        assert json.loads(held.read())["chunks"] == 1
    assert path.stat().st_ino != old_inode
    assert json.loads(path.read_text())["chunks"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_result_failure_leaves_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "result.json"
    write_result(record(chunks=1), path)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_result(record(chunks=2), path)
    assert json.loads(path.read_text())["chunks"] == 1


def test_write_result_to_a_device_writes_directly() -> None:
    # /dev/null is not a regular file: written in place (a temp file in /dev would fail)
    write_result(record(), "/dev/null")
    assert not [p for p in os.listdir("/dev") if p.startswith(".null.")]


def test_job_and_digest_travel_in_the_record() -> None:
    rec = record(job="s2-ndvi", digest="f62fb53e276cf852")
    data = json.loads(rec.to_json())
    assert data["job"] == "s2-ndvi" and data["digest"] == "f62fb53e276cf852"
    assert ResultRecord.from_json(rec.to_json()) == rec
    huge = record(job="j" * 63, digest="d" * 16, outcome="error", exitCode=1, error="x" * 9000)
    assert len(huge.to_json().encode()) <= MAX_BYTES
    assert json.loads(huge.to_json())["digest"] == "d" * 16  # never shortened


def test_temporary_names_do_not_come_from_the_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pod is pid 1: two writers on a shared volume must not share a temporary."""
    from gisjob_worker import outputs

    monkeypatch.setattr(os, "getpid", lambda: 1)
    used: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        used.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "result.json"
    write_result(record(chunks=1), path)
    write_result(record(chunks=2), path)
    assert len(set(used)) == 2
    assert all(outputs.is_temp_name(name) for name in used)  # a random token, not "1"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
