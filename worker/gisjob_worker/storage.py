"""Where data lives (pure): URIs, the paths GDAL opens, and the storage settings each library
needs, derived from the environment a user already has.

A GisJob names data as local paths, object URIs (``s3://bucket/key``, ``gs://``, ``az://``),
GDAL's own virtual paths (``/vsis3/bucket/key``, ...) or ``https://`` URLs (read only). GDAL
opens everything through :func:`gdal_path`; the output side (:mod:`location`) writes objects
through pyarrow's S3 client. Both get their settings from the AWS variables the SDKs read —
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the
shared files, ``AWS_REGION``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``,
``AWS_NO_SIGN_REQUEST`` — translated here where a library does not read them itself (GDAL
knows no ``AWS_ENDPOINT_URL``; pyarrow reads no endpoint from the environment at all).
Nothing here ever returns a secret in a message.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# object-store schemes and the GDAL virtual file systems they map to
OBJECT_SCHEMES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
HTTP_SCHEMES = ("http", "https")
# GDAL virtual file systems that reach over the network
NETWORK_VSI = (
    "/vsis3/",
    "/vsis3_streaming/",
    "/vsigs/",
    "/vsigs_streaming/",
    "/vsiaz/",
    "/vsiaz_streaming/",
    "/vsiadls/",
    "/vsicurl/",
    "/vsicurl_streaming/",
    "/vsioss/",
    "/vsiswift/",
    "/vsiwebhdfs/",
)
# GDAL retries these itself (GDAL_HTTP_MAX_RETRY): throttling, 5xx, a dropped connection
HTTP_MAX_RETRY = "6"
HTTP_RETRY_DELAY = "1"  # seconds, doubled by GDAL on each retry
HTTP_TIMEOUT = "60"
TRUE_WORDS = ("1", "yes", "true", "on")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class StorageUriError(ValueError):
    """A URI that names no place gisjob can read or write."""


@dataclass(frozen=True)
class ObjectUri:
    """``<scheme>://<bucket>/<key>``: an object (or, for outputs, a prefix) in a bucket."""

    scheme: str  # s3 | gs | az
    bucket: str
    key: str  # without leading or trailing "/"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else self.root

    @property
    def root(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    def join(self, rel: str) -> ObjectUri:
        key = f"{self.key}/{rel}" if self.key else rel
        return ObjectUri(self.scheme, self.bucket, key.strip("/"))

    @property
    def gdal(self) -> str:
        return f"{OBJECT_SCHEMES[self.scheme]}{self.bucket}/{self.key}".rstrip("/")


def scheme_of(uri: str) -> str | None:
    """``s3``, ``https``, ... or None for local paths and GDAL's ``/vsi…`` paths."""
    if "://" not in uri:
        return None
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    """A path on a local (or mounted) file system: no scheme, no GDAL virtual file system."""
    return "://" not in uri and not uri.startswith("/vsi")


def is_network(uri: str) -> bool:
    """Read over the network (object stores, HTTP), where a short read may be transient."""
    return scheme_of(uri) is not None or uri.startswith(NETWORK_VSI)


def parse_object_uri(uri: str) -> ObjectUri | None:
    """``s3://b/k``, ``gs://``, ``az://`` and their ``/vsis3/b/k`` forms; None for others.
    Raises :class:`StorageUriError` for an object URI without a bucket."""
    scheme = scheme_of(uri)
    if scheme in OBJECT_SCHEMES:
        rest = uri.split("://", 1)[1]
    else:
        for name, prefix in OBJECT_SCHEMES.items():
            if uri.startswith(prefix):
                scheme, rest = name, uri[len(prefix) :]
                break
        else:
            return None
    assert scheme is not None
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageUriError(f"{uri}: no bucket (expected {scheme}://<bucket>/<key>)")
    return ObjectUri(scheme, bucket, key.strip("/"))


def gdal_path(uri: str) -> str:
    """The path GDAL opens for ``uri``: ``s3://b/k`` → ``/vsis3/b/k``, ``https://…`` →
    ``/vsicurl/https://…``; GDAL paths and local paths as they are. Raises
    :class:`StorageUriError` for a scheme gisjob does not know."""
    scheme = scheme_of(uri)
    if scheme is None:
        return uri
    if scheme in HTTP_SCHEMES:
        return f"/vsicurl/{uri}"
    obj = parse_object_uri(uri)
    if obj is None:
        known = ", ".join(f"{s}://" for s in (*OBJECT_SCHEMES, *HTTP_SCHEMES))
        raise StorageUriError(f"{uri}: unknown scheme {scheme}:// (gisjob reads {known})")
    return obj.gdal


def has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


def glob_root(pattern: str) -> str:
    """The folder (key prefix) to list for a glob: its segments before the first wildcard."""
    segments = pattern.split("/")
    for i, seg in enumerate(segments):
        if has_wildcard(seg):
            return "/".join(segments[:i])
    return "/".join(segments[:-1])


def glob_matches(pattern: str, path: str) -> bool:
    """Shell-style match segment by segment (``*`` never crosses a ``/``), as ``glob.glob``."""
    pat, got = pattern.split("/"), path.split("/")
    return len(pat) == len(got) and all(
        fnmatch.fnmatchcase(g, p) for p, g in zip(pat, got, strict=True)
    )


# ----------------------------------------------------------------------------- settings


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_WORDS


@dataclass(frozen=True)
class Endpoint:
    """An S3-compatible endpoint from ``AWS_ENDPOINT_URL(_S3)``."""

    netloc: str  # host[:port]
    https: bool


def endpoint_from(env: Mapping[str, str]) -> Endpoint | None:
    """``AWS_ENDPOINT_URL_S3`` (the service-specific one wins) or ``AWS_ENDPOINT_URL``.
    Raises :class:`StorageUriError` for a value that is not an http(s) URL."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        raw = env.get(var, "").strip()
        if not raw:
            continue
        parts = urlsplit(raw)
        if parts.scheme not in HTTP_SCHEMES or not parts.netloc:
            raise StorageUriError(f"{var}: {raw!r} is not an http:// or https:// URL")
        return Endpoint(parts.netloc, parts.scheme == "https")
    return None


def gdal_storage_env(env: Mapping[str, str], *, requester_pays: bool = False) -> dict[str, str]:
    """What GDAL needs on top of ``env`` (which it reads itself for keys, profile, region,
    ``AWS_NO_SIGN_REQUEST``): the endpoint split into ``AWS_S3_ENDPOINT``/``AWS_HTTPS`` with
    path-style addressing, the requester-pays header, and retries with backoff for
    throttling and 5xx. Settings the user gave explicitly are kept."""
    out: dict[str, str] = {}
    ep = endpoint_from(env)
    if ep is not None and "AWS_S3_ENDPOINT" not in env:
        out["AWS_S3_ENDPOINT"] = ep.netloc
        out["AWS_HTTPS"] = "YES" if ep.https else "NO"
        if "AWS_VIRTUAL_HOSTING" not in env:
            out["AWS_VIRTUAL_HOSTING"] = "FALSE"  # S3-compatible stores: path-style
    if requester_pays:
        out["AWS_REQUEST_PAYER"] = "requester"
    defaults = {
        "GDAL_HTTP_MAX_RETRY": HTTP_MAX_RETRY,
        "GDAL_HTTP_RETRY_DELAY": HTTP_RETRY_DELAY,
        "GDAL_HTTP_TIMEOUT": HTTP_TIMEOUT,
    }
    out.update({k: v for k, v in defaults.items() if k not in env})
    return out


def arrow_s3_options(env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for ``pyarrow.fs.S3FileSystem`` (credentials come from the SDK's
    own chain: the environment, ``AWS_PROFILE`` and the shared files, web identity)."""
    opts: dict[str, Any] = {}
    ep = endpoint_from(env)
    if ep is not None:
        opts["endpoint_override"] = ep.netloc
        opts["scheme"] = "https" if ep.https else "http"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    elif ep is not None:
        opts["region"] = "us-east-1"  # S3-compatible stores: any region signs
    if _true(env.get("AWS_NO_SIGN_REQUEST")):
        opts["anonymous"] = True
    return opts


def credential_source(env: Mapping[str, str], exists: Callable[[str], bool]) -> str:
    """Which credentials a request used, for error messages: never a secret, only where the
    SDKs found them (``exists`` tells whether a file is there)."""
    if _true(env.get("AWS_NO_SIGN_REQUEST")):
        return "no credentials (AWS_NO_SIGN_REQUEST)"
    if env.get("AWS_ACCESS_KEY_ID"):
        extra = " and AWS_SESSION_TOKEN" if env.get("AWS_SESSION_TOKEN") else ""
        return f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY{extra} from the environment"
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    home = env.get("HOME", "~")
    files = [
        env.get("AWS_SHARED_CREDENTIALS_FILE", f"{home}/.aws/credentials"),
        env.get("AWS_CONFIG_FILE", f"{home}/.aws/config"),
    ]
    present = [f for f in files if exists(f)]
    if present:
        return f"profile {profile!r} from {' and '.join(present)}"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)"
    return "no credentials found (environment, shared files, instance metadata tried)"


def describe_credentials(env: Mapping[str, str] | None = None) -> str:
    """:func:`credential_source` of this process."""
    return credential_source(os.environ if env is None else env, os.path.exists)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with any credential value of ``env`` replaced (a safety net for messages
    that echo a request)."""
    env = os.environ if env is None else env
    for var in SECRET_VARS:
        value = env.get(var, "")
        if len(value) >= 4 and value in text:
            text = text.replace(value, f"<{var}>")
    return text


# what object stores answer, as GDAL and pyarrow word it
DENIED_WORDS = (
    "access denied",
    "accessdenied",
    "access_denied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "signature_does_not_match",
    "invalid_access_key_id",
    "forbidden",
    "http response code: 403",
    "http error 403",
    "expiredtoken",
    "signature we calculated does not match",
    "access key id you provided does not exist",
)
NO_BUCKET_WORDS = ("nosuchbucket", "no_such_bucket", "bucket does not exist", "bucket not found")
NO_KEY_WORDS = (
    "nosuchkey",
    "no_such_key",
    "key does not exist",
    "does not exist in the file system",
    "path does not exist",
)


def classify_failure(message: str) -> str | None:
    """``denied``, ``no-bucket``, ``no-key`` for the permanent failures an object store
    answers, None for others (throttling, 5xx, the network: transient)."""
    text = message.lower()
    if any(w in text for w in DENIED_WORDS):
        return "denied"
    if any(w in text for w in NO_BUCKET_WORDS) or re.search(r"bucket '[^']*' not found", text):
        return "no-bucket"
    if any(w in text for w in NO_KEY_WORDS):
        return "no-key"
    return None


def permanent_failure(uri: str, message: str, env: Mapping[str, str] | None = None) -> str | None:
    """A one-line reason when ``message`` (from GDAL or pyarrow, about ``uri``) is a failure
    no retry can fix — wrong credentials, a missing bucket or key — else None."""
    kind = classify_failure(message)
    obj = parse_object_uri(uri) if kind else None
    if kind is None:
        return None
    where = f"bucket {obj.bucket!r}" if obj else uri
    if kind == "denied":
        return (
            f"{uri}: access denied to {where} with "
            f"{credential_source(os.environ if env is None else env, os.path.exists)}"
        )
    if kind == "no-bucket":
        return f"{uri}: {where} does not exist"
    return f"{uri}: no such object"
