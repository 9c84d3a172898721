"""The S3 test server (tests/s3server.py) and its fault proxy work as the S3 tests assume."""

from __future__ import annotations

import http.client
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyarrow import fs as pafs
from rasterio.transform import Affine

from s3server import FaultKind, FaultProxy, SeaweedS3


def _retrying(proxy: FaultProxy) -> pafs.S3FileSystem:
    return proxy.filesystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5))


def test_objects_round_trip_through_pyarrow(
    s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    with s3_server.filesystem().open_output_stream(f"{s3_bucket}/a/one.bin") as out:
        out.write(b"\x00one")
    (tmp_path / "two.txt").write_text("two")
    s3_server.put_file(tmp_path / "two.txt", f"{s3_bucket}/a/b/two.txt")
    assert s3_server.get_bytes(f"{s3_bucket}/a/one.bin") == b"\x00one"
    assert s3_server.get_bytes(f"{s3_bucket}/a/b/two.txt") == b"two"
    assert s3_server.list_keys(f"{s3_bucket}/a") == [
        f"{s3_bucket}/a/b/two.txt",
        f"{s3_bucket}/a/one.bin",
    ]
    assert s3_server.list_keys(f"{s3_bucket}/none") == []


def test_gdal_reads_a_geotiff_from_the_bucket(
    s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    local = tmp_path / "small.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 48, "count": 1, "dtype": "uint16"}
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    with rasterio.open(local, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(pixels, 1)
    s3_server.put_file(local, f"{s3_bucket}/tiles/small.tif")
    for name, value in s3_server.gdal_env().items():  # rasterio.Env refuses AWS options
        monkeypatch.setenv(name, value)
    with rasterio.open(f"/vsis3/{s3_bucket}/tiles/small.tif") as src:
        assert (src.crs.to_epsg(), src.transform) == (32633, transform)
        assert np.array_equal(src.read(1), pixels)


def test_restart_keeps_the_objects(s3_server: SeaweedS3, s3_bucket: str) -> None:
    with s3_server.filesystem().open_output_stream(f"{s3_bucket}/kept") as out:
        out.write(b"before")
    port = s3_server.port
    s3_server.restart()
    assert s3_server.port == port
    assert s3_server.get_bytes(f"{s3_bucket}/kept") == b"before"
    with s3_server.filesystem().open_output_stream(f"{s3_bucket}/after") as out:
        out.write(b"after")
    assert s3_server.list_keys(s3_bucket) == [f"{s3_bucket}/after", f"{s3_bucket}/kept"]


@pytest.mark.parametrize(
    ("kind", "status", "code"), [("slowdown", 503, "SlowDown"), ("internal", 500, "InternalError")]
)
def test_an_injected_error_reaches_a_raw_client_once(
    s3_faults: FaultProxy, kind: FaultKind, status: int, code: str
) -> None:
    s3_faults.inject(kind, 1, method="GET", path_contains="/bucket")
    conn = http.client.HTTPConnection(s3_faults.endpoint, timeout=10)
    conn.request("GET", "/other")  # not matched: passes through to SeaweedFS
    assert conn.getresponse().read() and s3_faults.faults_injected == 0
    conn.request("GET", "/bucket/key")  # on the same kept-alive connection
    reply = conn.getresponse()
    body = reply.read()
    assert reply.status == status
    assert reply.getheader("Content-Type") == "application/xml"
    assert reply.getheader("Connection") == "close"
    assert int(reply.getheader("Content-Length", "")) == len(body)
    assert ET.fromstring(body).findtext("Code") == code
    conn.close()
    conn = http.client.HTTPConnection(s3_faults.endpoint, timeout=10)
    for method in ("HEAD", "GET"):  # the fault is spent; a HEAD's reply has no body
        conn.request(method, "/bucket/key")
        reply = conn.getresponse()
        assert reply.status == 403, reply.read()  # SeaweedFS: anonymous access denied
        reply.read()
    conn.close()
    assert (s3_faults.requests_seen, s3_faults.faults_injected) == (4, 1)


def test_pyarrow_retries_through_slowdowns(
    s3_server: SeaweedS3, s3_bucket: str, s3_faults: FaultProxy
) -> None:
    data = np.random.default_rng(0).bytes(6 << 20)  # a multipart upload: two parts, each
    fs = _retrying(s3_faults)  # aws-chunked with Expect: 100-continue
    s3_faults.inject("slowdown", 2, method="PUT")
    with fs.open_output_stream(f"{s3_bucket}/slow") as out:
        out.write(data)
    assert s3_faults.faults_injected == 2
    assert s3_server.get_bytes(f"{s3_bucket}/slow") == data
    # pyarrow reads into a buffer of the requested size, and aws-sdk-cpp writes an error's
    # body there too: a read shorter than the error's XML fails at once ("Failed to flush
    # response stream"), without retries. These reads are longer.
    s3_faults.inject("slowdown", 2, method="GET")
    assert fs.open_input_stream(f"{s3_bucket}/slow").read() == data
    assert s3_faults.faults_injected == 4


def test_pyarrow_retries_a_reset_connection(
    s3_server: SeaweedS3, s3_bucket: str, s3_faults: FaultProxy
) -> None:
    with s3_server.filesystem().open_output_stream(f"{s3_bucket}/r") as out:
        out.write(b"read after a reset")
    s3_faults.inject("reset", 1, method="GET")
    assert _retrying(s3_faults).open_input_stream(f"{s3_bucket}/r").read() == b"read after a reset"
    assert s3_faults.faults_injected == 1
