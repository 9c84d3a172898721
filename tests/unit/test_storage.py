"""storage: URIs, GDAL paths and the AWS settings each library gets (pure)."""

from __future__ import annotations

import pytest

from gisjob_worker import memory, storage
from gisjob_worker.storage import ObjectUri, StorageUriError


@pytest.mark.parametrize(
    ("uri", "gdal"),
    [
        ("s3://bucket/a/b.tif", "/vsis3/bucket/a/b.tif"),
        ("S3://bucket/k.tif", "/vsis3/bucket/k.tif"),
        ("gs://bucket/k.tif", "/vsigs/bucket/k.tif"),
        ("az://container/k.tif", "/vsiaz/container/k.tif"),
        ("https://example.org/cog.tif", "/vsicurl/https://example.org/cog.tif"),
        ("/vsis3/bucket/k.tif", "/vsis3/bucket/k.tif"),
        ("/data/in.tif", "/data/in.tif"),
        ("relative/in.tif", "relative/in.tif"),
    ],
)
def test_gdal_path(uri: str, gdal: str) -> None:
    assert storage.gdal_path(uri) == gdal


@pytest.mark.parametrize("uri", ["ftp://host/x.tif", "s3:///key-without-bucket"])
def test_unknown_schemes_and_bucketless_uris_are_errors(uri: str) -> None:
    with pytest.raises(StorageUriError, match=uri.split("/", maxsplit=1)[0]):
        storage.gdal_path(uri)


def test_local_network_and_object_uris() -> None:
    assert storage.is_local("/data/x.tif") and storage.is_local("x.tif")
    assert not storage.is_local("s3://b/k") and not storage.is_local("/vsimem/x.tif")
    assert storage.is_network("/vsis3/b/k") and storage.is_network("https://h/x")
    assert not storage.is_network("/vsimem/x.tif") and not storage.is_network("/data/x")
    assert storage.parse_object_uri("/vsis3/b/pre/fix/") == ObjectUri("s3", "b", "pre/fix")
    assert storage.parse_object_uri("/data/x") is None
    obj = ObjectUri("s3", "b", "out")
    assert str(obj.join("tiles/x.tif")) == "s3://b/out/tiles/x.tif"
    assert obj.join("tiles/x.tif").gdal == "/vsis3/b/out/tiles/x.tif"
    assert str(ObjectUri("s3", "b", "")) == "s3://b"


def test_glob_root_and_matching_segment_by_segment() -> None:
    assert storage.glob_root("scenes/2024/*.tif") == "scenes/2024"
    assert storage.glob_root("scenes/*/b08.tif") == "scenes"
    assert storage.glob_root("*.tif") == ""
    assert storage.glob_matches("scenes/*.tif", "scenes/a.tif")
    assert not storage.glob_matches("scenes/*.tif", "scenes/deeper/a.tif")
    assert storage.glob_matches("scenes/*/b0[48].tif", "scenes/x/b04.tif")
    assert not storage.glob_matches("scenes/*/b0[48].tif", "scenes/x/b05.tif")


def test_gdal_gets_the_endpoint_split_and_retries_unless_the_user_set_them() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    got = storage.gdal_storage_env(env)
    assert got["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert got["AWS_HTTPS"] == "NO" and got["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert got["GDAL_HTTP_MAX_RETRY"] == storage.HTTP_MAX_RETRY
    assert "AWS_REQUEST_PAYER" not in got
    # the service-specific endpoint wins; https; the user's own settings are kept
    env = {
        "AWS_ENDPOINT_URL": "http://ignored:1",
        "AWS_ENDPOINT_URL_S3": "https://s3.example.org",
        "AWS_VIRTUAL_HOSTING": "TRUE",
        "GDAL_HTTP_MAX_RETRY": "1",
    }
    got = storage.gdal_storage_env(env, requester_pays=True)
    assert got["AWS_S3_ENDPOINT"] == "s3.example.org" and got["AWS_HTTPS"] == "YES"
    assert "AWS_VIRTUAL_HOSTING" not in got and "GDAL_HTTP_MAX_RETRY" not in got
    assert got["AWS_REQUEST_PAYER"] == "requester"
    assert "AWS_S3_ENDPOINT" not in storage.gdal_storage_env({})
    with pytest.raises(StorageUriError, match="AWS_ENDPOINT_URL: 'localhost:9000'"):
        storage.gdal_storage_env({"AWS_ENDPOINT_URL": "localhost:9000"})


def test_arrow_options() -> None:
    assert storage.arrow_s3_options({}) == {}
    got = storage.arrow_s3_options(
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_NO_SIGN_REQUEST": "YES"}
    )
    assert got == {
        "endpoint_override": "127.0.0.1:9000",
        "scheme": "http",
        "region": "us-east-1",
        "anonymous": True,
    }
    assert storage.arrow_s3_options({"AWS_DEFAULT_REGION": "eu-west-1"}) == {"region": "eu-west-1"}


def test_credential_source_names_where_never_what() -> None:
    def none(_: str) -> bool:
        return False

    secret = {"AWS_ACCESS_KEY_ID": "AKIAXXXX", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    text = storage.credential_source(secret, none)
    assert "from the environment" in text and "s3cr3t" not in text and "AKIAXXXX" not in text
    assert "AWS_SESSION_TOKEN" in storage.credential_source(
        {**secret, "AWS_SESSION_TOKEN": "t"}, none
    )
    assert "AWS_NO_SIGN_REQUEST" in storage.credential_source(
        {**secret, "AWS_NO_SIGN_REQUEST": "true"}, none
    )
    files = {"/home/u/.aws/credentials"}
    assert storage.credential_source(
        {"HOME": "/home/u", "AWS_PROFILE": "prod"}, files.__contains__
    ) == ("profile 'prod' from /home/u/.aws/credentials")
    assert "web identity" in storage.credential_source(
        {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}, none
    )
    assert "no credentials found" in storage.credential_source({}, none)


def test_redact() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIA1234"}
    assert storage.redact("key AKIA1234 secret s3cr3t-value", env) == (
        "key <AWS_ACCESS_KEY_ID> secret <AWS_SECRET_ACCESS_KEY>"
    )


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("AWS Error ACCESS_DENIED during HeadObject operation", "denied"),
        ("The request signature we calculated does not match the signature", "denied"),
        ("The AWS Access Key Id you provided does not exist in our records.", "denied"),
        ("The specified bucket does not exist", "no-bucket"),
        ("Bucket 'x' not found.", "no-bucket"),
        ("The specified key does not exist.", "no-key"),
        ("AWS Error SLOW_DOWN during GetObject: Please reduce your request rate.", None),
        ("HTTP response code: 503", None),
        ("CURL error: Failed to connect to 127.0.0.1 port 1", None),
    ],
)
def test_classify_failure(message: str, kind: str | None) -> None:
    assert storage.classify_failure(message) == kind


def test_permanent_failure_names_the_bucket_and_the_credential_source() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIA1234", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    text = storage.permanent_failure("s3://b/k.tif", "Access Denied", env)
    assert text is not None and "access denied to bucket 'b'" in text
    assert "from the environment" in text and "s3cr3t" not in text
    assert storage.permanent_failure("s3://b/k", "SlowDown", env) is None


def test_object_storage_memory_is_counted() -> None:
    none = memory.network_bytes("raster", remote_input=False, remote_output=False)
    read = memory.network_bytes("raster", remote_input=True, remote_output=False)
    both = memory.network_bytes("raster", remote_input=True, remote_output=True)
    assert none == 0 < read == memory.VSI_CURL_CACHE_BYTES < both
    assert memory.network_bytes(
        "vector", remote_input=False, remote_output=True
    ) < memory.network_bytes("raster", remote_input=False, remote_output=True)
