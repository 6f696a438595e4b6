"""Where a job's things are: storage roots, MLflow tracking URIs and Ray addresses, parsed and
checked before any work. Each check returns why a location is not one its command can use (None
when it is), so a typo such as `s3:/bucket` or `htp://host` is refused with one line instead of
writing to a folder the user did not mean or failing late inside a library."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# a URI's scheme followed by a slash ("s3:/x", "gs://x"); "name:stuff" without one can be a local folder
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/|$)")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # what any S3 server could take as a bucket name
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
TRACKING_DATABASES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores, also as postgresql+psycopg2:// ...


def storage_problem(uri: str) -> str | None:
    """A storage root is a local folder, file:///PATH or s3://BUCKET[/PREFIX]."""
    use = "use a local folder or s3://bucket/prefix"
    if not uri.strip():
        return f"the storage URI is empty: {use}"
    match = _SCHEME.match(uri)
    if not match:
        return None
    scheme = match.group(1)
    if scheme not in ("s3", "file"):
        return f"unsupported storage URI {uri!r} (scheme {scheme}://): {use}"
    if not uri.startswith(f"{scheme}://"):
        return f"malformed storage URI {uri!r}: write {scheme}://{uri[len(scheme) + 1:].lstrip('/')}"
    rest = uri[len(scheme) + 3:]
    if scheme == "file":
        return None if rest else f"malformed storage URI {uri!r}: file:// needs a path (file:///abs/path)"
    bucket = rest.split("/", 1)[0]
    if not _BUCKET.match(bucket):
        return f"malformed storage URI {uri!r}: no bucket name after s3://; write s3://bucket/prefix"
    return None


def tracking_problem(uri: str) -> str | None:
    """An MLflow tracking URI: sqlite:///FILE.db, http(s)://HOST[:PORT], databricks, a database
    URI (postgresql://, mysql://, mssql://), file:///PATH or a local folder."""
    use = "use sqlite:///FILE.db, http(s)://HOST:PORT, a database URI (postgresql://...) or a local folder"
    if not uri.strip():
        return f"the tracking URI is empty: {use}"
    match = _SCHEME.match(uri)
    if not match:
        return None if not uri.startswith("databricks") or re.fullmatch(r"databricks(-uc)?", uri) else \
            f"malformed tracking URI {uri!r}: {use}"
    scheme, base = match.group(1), match.group(1).split("+")[0]
    if scheme == "sqlite":
        path = uri[len("sqlite:"):]
        return None if path.startswith("///") and len(path) > 3 else \
            f"malformed tracking URI {uri!r}: a SQLite file is sqlite:///relative.db or sqlite:////abs/path.db"
    if not uri.startswith(f"{scheme}://"):
        return f"malformed tracking URI {uri!r}: write {scheme}://{uri[len(scheme) + 1:].lstrip('/')}"
    if scheme in ("http", "https"):
        return _url_problem(uri, "tracking URI", "http(s)://HOST:PORT")
    if base in TRACKING_DATABASES or scheme in ("file", "databricks", "databricks-uc"):
        return None if uri[len(scheme) + 3:] or scheme.startswith("databricks") else \
            f"malformed tracking URI {uri!r}: nothing after {scheme}://"
    return f"unsupported tracking URI {uri!r} (scheme {scheme}://): {use}"


def _url_problem(url: str, what: str, form: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as e:
        return f"malformed {what} {url!r} ({e}): write {form}"
    return None if parts.hostname else f"malformed {what} {url!r}: no host; write {form}"


def ray_cluster_problem(address: str) -> str | None:
    """For jobs that run on Ray (run, extract, estimate, reproduce): auto, local, HOST:PORT (the
    cluster's GCS, 6379) or ray://HOST:PORT (Ray Client, 10001)."""
    use = "use auto, HOST:6379 or ray://HOST:10001"
    if address in ("auto", "local"):
        return None
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("http", "https"):
        return (f"--ray-address {address} is a Ray Jobs API URL, which submit, status, logs and stop take; "
                f"to run this command on the cluster {use} (or send the job with `ie-flow submit`)")
    if sep and scheme != "ray":
        return f"bad Ray address {address!r} (scheme {scheme}://): {use}"
    return None if _HOST_PORT.match(rest if sep else address) and 0 < int(address.rpartition(":")[2]) < 65536 \
        else f"bad Ray address {address!r}: {use}"


def jobs_api_problem(address: str) -> str | None:
    """For submit, status, logs and stop: the Ray Jobs API, http(s)://HEAD:8265."""
    if not address.startswith(("http://", "https://")):
        return f"--ray-address must be the Jobs API URL (http://HEAD:8265) here, got {address!r}"
    return _url_problem(address, "Ray Jobs API URL", "http://HEAD:8265")
