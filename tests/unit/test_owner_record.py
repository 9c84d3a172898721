"""Output-location ownership: the owner record, claim and check semantics, races between
claimers (with and without hard links), corrupt records, and the worker's refusal."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gisjob_worker import ledgerstore, ownership
from gisjob_worker.errors import EXIT_ERROR, EXIT_INPUT, GisJobError, InputError
from gisjob_worker.ownership import Owner, OwnershipError, check, claim, owner_path

VICTIM = Owner("tenant-a", "victim", "uid1")
THIEF = Owner("tenant-b", "thief", "uid2")
REFUSED = re.compile(
    r"(?P<out>\S+): the output location belongs to GisJob tenant-a/victim "
    r"\(uid uid1, since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\); choose another spec.output.uri"
)


def _no_links(src: Any, dst: Any, **kw: Any) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownership, "READ_PAUSE", 0.0)


# ---------------------------------------------------------------------------- identity


def test_owner_parses_namespace_name_uid_and_rejects_anything_else() -> None:
    uid = "0f8e3a2c-5b1d-4c7e-9a6f-2d4b8c1e7a90"
    assert Owner.parse(f"team-a/ndvi.v2/{uid}") == Owner("team-a", "ndvi.v2", uid)
    assert str(VICTIM) == "tenant-a/victim"
    for bad in ("a/b", "a/b/c/d", "/b/c", "a//c", "a/b/", "A/b/c", "a/b c/u", "a/-b/u"):
        with pytest.raises(ValueError):
            Owner.parse(bad)


def test_owner_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GISJOB_OWNER", raising=False)
    assert ownership.owner_from_env() is None
    monkeypatch.setenv("GISJOB_OWNER", "")
    assert ownership.owner_from_env() is None
    monkeypatch.setenv("GISJOB_OWNER", "tenant-b/thief/uid2")
    assert ownership.owner_from_env() == THIEF
    monkeypatch.setenv("GISJOB_OWNER", "tenant-b/thief")  # garbled: never "no check"
    with pytest.raises(OwnershipError, match=r"\$GISJOB_OWNER: expected") as info:
        ownership.owner_from_env()
    assert info.value.exit_code == EXIT_INPUT


def test_same_job_is_namespace_and_name() -> None:
    assert VICTIM.same_job(Owner("tenant-a", "victim", "uid9"))
    assert not VICTIM.same_job(Owner("tenant-b", "victim", "uid1"))
    assert not VICTIM.same_job(Owner("tenant-a", "other", "uid1"))


def test_the_owner_record_lives_with_the_ledger(tmp_path: Path) -> None:
    assert ownership.STATE_DIR == ledgerstore.STATE_DIR
    assert owner_path(tmp_path) == tmp_path / ".gisjob" / "owner.json"


# ---------------------------------------------------------------------------- claim, check


def test_claim_creates_the_folder_and_the_record(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    claim(out, VICTIM)
    data = json.loads(owner_path(out).read_text())
    assert set(data) == {"v", "namespace", "name", "uid", "claimedAt"}
    assert data["v"] == 1
    assert (data["namespace"], data["name"], data["uid"]) == ("tenant-a", "victim", "uid1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["claimedAt"])
    assert os.listdir(out / ".gisjob") == ["owner.json"]  # no temporary left behind
    assert owner_path(out).stat().st_mode & 0o777 == 0o644


def test_claim_again_by_the_same_job_changes_nothing(tmp_path: Path) -> None:
    claim(tmp_path, VICTIM)
    before = owner_path(tmp_path).read_bytes()
    claim(tmp_path, VICTIM)
    # deleted and re-created under the same name: the same job for its outputs
    claim(tmp_path, Owner("tenant-a", "victim", "uid9"))
    check(tmp_path, Owner("tenant-a", "victim", "uid9"))
    assert owner_path(tmp_path).read_bytes() == before  # the first uid and time stay
    assert os.listdir(tmp_path / ".gisjob") == ["owner.json"]


@pytest.mark.parametrize(
    "other",
    [THIEF, Owner("tenant-b", "victim", "uid1"), Owner("tenant-a", "thief", "uid1")],
    ids=["other-job", "same-name-other-namespace", "same-namespace-other-name"],
)
def test_another_job_is_refused_naming_the_owner(tmp_path: Path, other: Owner) -> None:
    claim(tmp_path, VICTIM)
    before = owner_path(tmp_path).read_bytes()
    for attempt in (claim, check):
        with pytest.raises(OwnershipError) as info:
            attempt(tmp_path, other)
        assert isinstance(info.value, InputError) and info.value.exit_code == EXIT_INPUT
        match = REFUSED.fullmatch(str(info.value))
        assert match and match["out"] == str(tmp_path)
        assert json.loads(before)["claimedAt"] in str(info.value)
    assert owner_path(tmp_path).read_bytes() == before
    assert os.listdir(tmp_path / ".gisjob") == ["owner.json"]


def test_check_of_an_unclaimed_location_passes_and_writes_nothing(tmp_path: Path) -> None:
    check(tmp_path / "missing", THIEF)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "out" / ".gisjob").mkdir(parents=True)
    check(tmp_path / "out", THIEF)
    assert os.listdir(tmp_path / "out" / ".gisjob") == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"", "empty"),
        (b"\n", "empty"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 2, "namespace": "a", "name": "b", "uid": "c", "claimedAt": "t"}', "version 2"),
        (b'{"v": 1, "namespace": "a", "name": "b", "uid": "c"}', "no claimedAt"),
        (b'{"v": 1, "namespace": "a", "name": 7, "uid": "c", "claimedAt": "t"}', "strings"),
        (b'{"v": 1, "namespace": "A/B", "name": "b", "uid": "c", "claimedAt": "t"}', "namespace"),
    ],
)
def test_a_corrupt_record_refuses_everyone_and_is_never_overwritten(
    tmp_path: Path, no_pause: None, content: bytes, reason: str
) -> None:
    path = owner_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    for attempt in (claim, check):
        for who in (VICTIM, THIEF):
            with pytest.raises(OwnershipError, match="unreadable") as info:
                attempt(tmp_path, who)
            text = str(info.value)
            assert "\n" not in text and reason in text and str(path) in text
            assert "never overwrites it" in text
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == ["owner.json"]


def test_a_folder_in_place_of_the_record_is_corrupt(tmp_path: Path) -> None:
    owner_path(tmp_path).mkdir(parents=True)
    with pytest.raises(OwnershipError, match="a folder, not a file"):
        claim(tmp_path, VICTIM)


def test_a_record_still_being_written_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links a racing claimer creates the file first and writes it next: an
    empty record is read again before it counts as corrupt."""
    path = owner_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    record = ownership.Claim(VICTIM, "2026-01-02T03:04:05Z").to_json()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            path.write_text(json.dumps(record))

    monkeypatch.setattr("gisjob_worker.ownership.time.sleep", sleep)
    with pytest.raises(OwnershipError, match=r"since 2026-01-02T03:04:05Z\)"):
        check(tmp_path, THIEF)
    assert len(sleeps) == 3


def test_an_unreadable_file_system_is_a_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim(tmp_path, VICTIM)

    def denied(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(GisJobError, match="cannot read the owner record") as info:
        check(tmp_path, VICTIM)
    assert not isinstance(info.value, InputError) and info.value.exit_code == EXIT_ERROR


def test_a_location_that_cannot_hold_the_record_is_a_retryable_error(tmp_path: Path) -> None:
    (tmp_path / ".gisjob").write_text("a file where the folder goes")
    check(tmp_path, VICTIM)  # no record can be there
    with pytest.raises(GisJobError, match="cannot claim the output location") as info:
        claim(tmp_path, VICTIM)
    assert info.value.exit_code == EXIT_ERROR


def test_a_record_gone_between_losing_and_reading_is_a_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownership, "_create", lambda path, data: False)  # lost, then removed
    with pytest.raises(GisJobError, match="vanished while claiming") as info:
        claim(tmp_path, VICTIM)
    assert info.value.exit_code == EXIT_ERROR


# ---------------------------------------------------------------------------- without links


def test_claim_without_hard_links_creates_the_record_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gisjob_worker.ownership.os.link", _no_links)
    claim(tmp_path, VICTIM)
    assert json.loads(owner_path(tmp_path).read_text())["name"] == "victim"
    assert os.listdir(tmp_path / ".gisjob") == ["owner.json"]
    claim(tmp_path, VICTIM)
    with pytest.raises(OwnershipError, match="belongs to GisJob tenant-a/victim"):
        claim(tmp_path, THIEF)


def test_a_failed_write_without_hard_links_leaves_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gisjob_worker.ownership.os.link", _no_links)
    real_write = os.write
    calls: list[int] = []

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 2:  # the record itself (the first write is the temporary)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("gisjob_worker.ownership.os.write", write)
    with pytest.raises(GisJobError, match="No space left on device"):
        claim(tmp_path, VICTIM)
    assert os.listdir(tmp_path / ".gisjob") == []
    monkeypatch.setattr("gisjob_worker.ownership.os.write", real_write)
    claim(tmp_path, THIEF)  # nobody owns it: the next claim succeeds
    check(tmp_path, THIEF)


# ---------------------------------------------------------------------------- races

CLAIMERS = 6
LOCATIONS = 12


def _claimer(
    index: int, root: str, links: bool, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    if not links:
        setattr(os, "link", _no_links)  # noqa: B010 - this child process only
    me = Owner(f"tenant-{index}", "job", f"uid{index}")
    barrier.wait()
    for loc in range(LOCATIONS):
        try:
            claim(Path(root) / f"out{loc}", me)
            results.put((loc, index, ""))
        except OwnershipError as exc:
            results.put((loc, index, str(exc)))


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "o-excl"])
def test_claimers_racing_for_a_location_see_exactly_one_winner(tmp_path: Path, links: bool) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(CLAIMERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(i, str(tmp_path), links, barrier, results))
        for i in range(CLAIMERS)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(CLAIMERS * LOCATIONS)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for loc in range(LOCATIONS):
        outcomes = {index: error for where, index, error in got if where == loc}
        assert len(outcomes) == CLAIMERS
        winners = [index for index, error in outcomes.items() if not error]
        assert len(winners) == 1, outcomes
        (winner,) = winners
        record = json.loads(owner_path(tmp_path / f"out{loc}").read_text())
        assert record["namespace"] == f"tenant-{winner}" and record["uid"] == f"uid{winner}"
        for index, error in outcomes.items():
            if index != winner:
                assert f"belongs to GisJob tenant-{winner}/job (uid uid{winner}" in error
        assert os.listdir(tmp_path / f"out{loc}" / ".gisjob") == ["owner.json"]


# ---------------------------------------------------------------------------- the worker


def test_a_worker_of_another_job_is_refused_before_its_tile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_job: Any, job_doc: Any
) -> None:
    from gisjob_worker import attempt
    from gisjob_worker.spec import load_job

    out = tmp_path / "out"
    job = load_job(write_job(job_doc(output={"uri": str(out)})))
    claim(out, VICTIM)
    monkeypatch.delenv("GISJOB_OWNER", raising=False)
    assert attempt.check_owner(job, "r0000c0000") is None  # by hand: no identity, no check
    monkeypatch.setenv("GISJOB_OWNER", "tenant-a/victim/uid1")
    assert attempt.check_owner(job, "r0000c0000") is None
    monkeypatch.setenv("GISJOB_OWNER", "tenant-b/thief/uid2")
    refused = attempt.check_owner(job, "r0000c0000")
    assert refused is not None
    assert (refused.tile, refused.outcome, refused.exitCode) == ("r0000c0000", "input", 2)
    assert refused.job == job.name and refused.error
    assert REFUSED.fullmatch(refused.error)


def test_a_pod_that_does_not_see_the_claimed_location_is_refused(tmp_path: Path) -> None:
    """Workers and finalizers run after their planner claimed the location: no record means
    this pod writes somewhere else (a missing volume, its own /tmp) — refused, exit 2."""
    with pytest.raises(OwnershipError, match="this pod does not see it") as info:
        check(tmp_path / "pod-local", THIEF, claimed=True)
    assert info.value.exit_code == EXIT_INPUT
    assert not (tmp_path / "pod-local").exists()
    claim(tmp_path / "shared", THIEF)
    check(tmp_path / "shared", THIEF, claimed=True)  # the claimed location passes
