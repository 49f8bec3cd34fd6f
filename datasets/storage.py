"""Where data lives: a local folder or an object store, named by a path or a URL.

    >>> root = Location.of("s3://bucket/coco")        # or gs://..., https://..., /data/coco
    >>> ann = root / "annotations/instances_val2017.json"
    >>> str(ann)
    's3://bucket/coco/annotations/instances_val2017.json'
    >>> data = ann.read_bytes()                        # doctest: +SKIP

Schemes:
- a path (or `file://`): the local file system, through pathlib, as before;
- `s3://` and `gs://`: pyarrow.fs (`S3FileSystem`, `GcsFileSystem`). pyarrow is already a
  dependency and is what Ray Data reads with; its clients are the cloud SDKs' own, with
  their standard credential chains (environment, profile, instance role / metadata server)
  and their own retries of transient errors (GCS's for `GCS_RETRY_S`, not its default 15
  minutes). A GCS emulator or private endpoint comes from `endpoint_override` (a URL, or
  host:port with `scheme`) or the client's CLOUD_STORAGE_EMULATOR_ENDPOINT. An
  S3-compatible endpoint comes from `endpoint_override` in the storage options or the
  standard `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables (read here: pyarrow does not
  honour them everywhere).
  A whole S3 object (`read_bytes`: a sample, a shard, an annotation file) is one GET
  through obstore (Rust's object_store), with botocore's credential chain: pyarrow's
  files ask for the size first, so each object cost two requests (HEAD + GET) and two
  round trips, and botocore's own GET costs 4x obstore's client CPU, all of it under the GIL;
- `http://` and `https://`: read-only, through the standard library, with retries and
  exponential back-off on connection errors and 5xx answers. HTTP cannot list a folder,
  so only layouts whose files are named by an index (COCO's annotations) work over it.

A `Location` pickles as its URL and options (each process opens its own client), so a
dataset reader holding one travels to the inference actors, which fetch their samples'
bytes themselves. Credentials never appear in a Location: options that would carry them
are refused (`check_options`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import io
import logging
import os
import posixpath
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "gs", "http", "https")
#: storage options that would put a secret into run.json and logs
SECRET_OPTIONS = ("access_key", "secret_key", "session_token", "access_token", "password")
#: tries for one HTTP request (S3 and GCS retry inside their SDKs)
HTTP_ATTEMPTS = 4
#: tries one S3 request gets (pyarrow's AwsStandardS3RetryStrategy in `fs`, obstore's retry config in `_s3`)
S3_ATTEMPTS = 5
#: seconds the GCS client retries a request (its own default is 15 minutes: an unreachable
#: endpoint would hold a job that long before saying so); `retry_time_limit` sets it
GCS_RETRY_S = 30.0


def is_remote(text: str | os.PathLike) -> bool:
    """Whether `text` names object storage or a web server (not a local path)."""
    return urllib.parse.urlsplit(str(text)).scheme.lower() in REMOTE_SCHEMES


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse credentials among the storage options: they come from the standard chains."""
    secret = sorted(k for k in options if k.lower() in SECRET_OPTIONS)
    if secret:
        raise ValueError(f"storage options {secret}: credentials come from the environment, a profile or an "
                         "instance role, never from the job's options (they would be written to run.json)")


def check_url(text: str) -> None:
    """Refuse a URL that carries credentials (`https://user:password@host/...`)."""
    parts = urllib.parse.urlsplit(str(text))
    if parts.scheme.lower() in REMOTE_SCHEMES and (parts.username or parts.password):
        raise ValueError(f"{parts.scheme}://{parts.hostname}/...: credentials in a URL would be written to run.json "
                         "and logs; use the environment, a profile or an instance role")


class Location:
    """A file or folder: local (`path` is set) or remote (`scheme` is s3, gs, http or https)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        """`url`: a local path or a URL; `options`: the filesystem's options (pyarrow's
        `S3FileSystem` / `GcsFileSystem` keyword arguments, e.g. endpoint_override)."""
        text = str(url)
        parts = urllib.parse.urlsplit(text)
        self.scheme = parts.scheme.lower() if parts.scheme.lower() in REMOTE_SCHEMES else ""
        self.options = dict(options or {})
        check_options(self.options)
        check_url(text)
        if self.scheme:
            self.url = text.rstrip("/") if parts.path not in ("", "/") else text
            self.path = None
        else:
            local = text[len("file://"):] if text.startswith("file://") else text
            self.path = Path(local).expanduser()
            self.url = str(self.path)
        self._fs: Any = None
        self._s3_store: Any = None
        self._lock = threading.Lock()
        #: the location this one was made from (`root / file`), whose client it shares
        self._parent: Location | None = None

    @classmethod
    def of(cls, url: str | os.PathLike | Location, options: Mapping[str, Any] | None = None) -> Location:
        return url if isinstance(url, Location) else cls(str(url), options)

    # -- pickling: the URL and options, never a client --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["options"])

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.url, self.options) == (other.url, other.options)

    def __hash__(self) -> int:
        return hash(self.url)

    def __fspath__(self) -> str:
        """A local location is path-like (`Path(location)`, `open(location)`); a remote one is not."""
        if self.path is None:
            raise TypeError(f"{self.url} is not a local path")
        return str(self.path)

    # -- names ---------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else posixpath.basename(self.url.rstrip("/"))

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    def __truediv__(self, relative: str) -> Location:
        """The location `relative` below this one; names that climb out (`..`, absolute
        paths), as an annotation file might hold, raise ValueError."""
        relative = str(relative)
        if self.path is not None:
            root = Path(os.path.abspath(self.path))
            joined = Path(os.path.normpath(root / relative))
            if joined != root and root not in joined.parents:
                raise ValueError(f"path {relative!r} escapes the data root {root}")
            child = Location(str(self.path / relative), self.options)
            return child
        clean = posixpath.normpath("/" + relative.replace("\\", "/")).lstrip("/")
        if relative.startswith("/") or any(p == ".." for p in relative.replace("\\", "/").split("/")):
            raise ValueError(f"path {relative!r} escapes the data root {self.url}")
        child = Location(f"{self.url.rstrip('/')}/{clean}", self.options)
        child._parent = self  # one client (and its connection pool) per root, not per file
        return child

    @property
    def bucket(self) -> Location:
        """The bucket (or server) a remote location is in."""
        parts = urllib.parse.urlsplit(self.url)
        return Location(f"{parts.scheme}://{parts.netloc}", self.options)

    def resolved(self) -> str:
        """A local path made absolute (links followed), a URL as it is."""
        return str(self.path.resolve()) if self.path is not None else self.url

    def relative_to(self, root: Location) -> str:
        if self.path is not None and root.path is not None:
            return str(self.path.relative_to(root.path))
        prefix = root.url.rstrip("/") + "/"
        if not self.url.startswith(prefix):
            raise ValueError(f"{self.url} is not under {root.url}")
        return self.url[len(prefix):]

    # -- the file system -----------------------------------------------------------------
    @property
    def _key(self) -> str:
        """The object's path for pyarrow.fs: 'bucket/key'."""
        parts = urllib.parse.urlsplit(self.url)
        return (parts.netloc + parts.path).rstrip("/")

    @property
    def fs(self) -> Any:
        """The pyarrow filesystem (S3, GCS), made on first use in this process and shared with
        the locations below this one (a new client per file would open a connection per file)."""
        if self._fs is None and self._parent is not None:
            self._fs = self._parent.fs
        if self._fs is None:
            import pyarrow.fs as pafs

            if self.scheme == "s3":
                options = self._s3_options()
                options.setdefault("retry_strategy", pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
                self._fs = pafs.S3FileSystem(**options)
            elif self.scheme == "gs":
                self._fs = pafs.GcsFileSystem(**self._gcs_options())
            else:
                raise ValueError(f"{self.url}: no file system for {self.scheme}://")
        return self._fs

    def _s3_options(self) -> dict[str, Any]:
        """The storage options as pyarrow's `S3FileSystem` takes them, which obstore's store
        (`_s3`) is made from too: the endpoint from the options or the standard variables,
        timeouts as numbers, `anonymous` as a bool (options from flags are text)."""
        options = dict(self.options)
        endpoint = options.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_override"] = endpoint
        for key in ("connect_timeout", "request_timeout"):
            if key in options:
                options[key] = float(options[key])
        if "anonymous" in options:
            options["anonymous"] = _flag(options["anonymous"])
        return options

    def _gcs_options(self) -> dict[str, Any]:
        """The storage options as pyarrow's `GcsFileSystem` takes them: the endpoint as a URL
        or as host:port with `scheme`, `anonymous` as a bool, `retry_time_limit` in seconds
        (default `GCS_RETRY_S`). Without `endpoint_override`, Google's client reads its own
        CLOUD_STORAGE_EMULATOR_ENDPOINT."""
        import datetime

        options = dict(self.options)
        endpoint = options.get("endpoint_override")
        if endpoint and "://" in endpoint:
            options["scheme"], options["endpoint_override"] = endpoint.split("://", 1)
        if "anonymous" in options:
            options["anonymous"] = _flag(options["anonymous"])
        options["retry_time_limit"] = datetime.timedelta(seconds=float(options.get("retry_time_limit", GCS_RETRY_S)))
        return options

    @property
    def _s3(self) -> Any:
        """obstore's S3 store of this location's bucket, for whole-object GETs, made on first
        use in this process and shared like `fs`, from the same options: endpoint (path-style
        addressing, as pyarrow uses for one), region, anonymous, timeouts, `S3_ATTEMPTS` tries
        with back-off 0.1 s doubling to 0.8 s (a body cut short is asked for again from where it
        stopped). Credentials: botocore's chain, read once here and again every 5 minutes."""
        if self._parent is not None:
            return self._parent._s3
        with self._lock:
            if self._s3_store is None:
                from datetime import timedelta

                from obstore.store import S3Store

                options = self._s3_options()
                endpoint = options.get("endpoint_override")
                if endpoint and "://" not in endpoint:
                    endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
                client: dict[str, Any] = {"allow_http": True}
                for key, name in (("connect_timeout", "connect_timeout"), ("request_timeout", "timeout")):
                    if key in options:
                        client[name] = f"{round(options[key] * 1000)}ms"
                anonymous = bool(options.get("anonymous"))
                bucket = urllib.parse.urlsplit(self.url).netloc
                chain = None if anonymous else _BotocoreChain.find()
                if chain is not None and chain.credentials is None:  # kept: the chain is not asked per sample
                    self._s3_store = NoCredentials(f"access denied (GetObject): {aws_credential_source()}")
                else:
                    self._s3_store = S3Store(
                        bucket, endpoint=endpoint, region=_s3_region(options, bucket),
                        virtual_hosted_style_request=_flag(options.get("force_virtual_addressing", False)) or not endpoint,
                        skip_signature=anonymous, client_options=client,
                        retry_config={"max_retries": S3_ATTEMPTS - 1, "retry_timeout": timedelta(minutes=3),
                                      "backoff": {"init_backoff": timedelta(seconds=0.1),
                                                  "max_backoff": timedelta(seconds=0.8), "base": 2}},
                        credential_provider=chain)
            if isinstance(self._s3_store, NoCredentials):
                raise NoCredentials(str(self._s3_store))
            return self._s3_store

    def _s3_get(self) -> bytes:
        """The whole object in one GET, through obstore (Rust's object_store: the request and
        its body are read without the GIL, about a quarter of botocore's CPU per object).
        Raises FileNotFoundError, OSError naming a refusal, or NetworkError."""
        import obstore.exceptions as oe

        try:
            return self._s3.get(self._key.partition("/")[2]).bytes().to_bytes()
        except FileNotFoundError:
            raise FileNotFoundError("not found (NoSuchKey)") from None
        except (oe.PermissionDeniedError, oe.UnauthenticatedError):
            raise OSError(f"access denied (GetObject): {aws_credential_source()}") from None
        except oe.BaseError as exc:
            why = " ".join(obstore_text(exc).split(" - ", 1)[-1].removeprefix("Generic S3 error: ").split())
            if "403 Forbidden" in why:
                raise OSError(f"access denied (GetObject): {aws_credential_source()}") from None
            if not isinstance(exc, oe.GenericError):  # a request obstore would not send
                raise OSError(f"GetObject: {why}") from None
            if "body error" in why:
                why = "connection dropped mid-body"
            raise NetworkError(f"network error (GetObject, {S3_ATTEMPTS} tries): {why}") from None

    def _info(self) -> Any:
        return self.fs.get_file_info(self._key)

    def is_file(self) -> bool:
        if self.path is not None:
            return self.path.is_file()
        if self.scheme in ("http", "https"):
            try:
                self._http("HEAD")
                return True
            except FileNotFoundError:
                return False
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """Whether this is a folder (for object stores: a prefix with objects under it, or
        a bucket). Over HTTP folders cannot be seen: True, and reading a file says more."""
        if self.path is not None:
            return self.path.is_dir()
        if self.scheme in ("http", "https"):
            return True
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def glob(self, pattern: str) -> list[Location]:
        """The files directly in this folder whose names match `pattern`, sorted by name."""
        if self.path is not None:
            return [Location(str(p), self.options) for p in sorted(self.path.glob(pattern)) if p.is_file()]
        if self.scheme in ("http", "https"):
            raise OSError("an HTTP server cannot list a folder (use object storage for this dataset)")
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self._key, allow_not_found=True))
        names = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
        return [self / n for n in names if fnmatch.fnmatch(n, pattern)]

    def size(self) -> int:
        return self.stat_key()[0]

    def stat_key(self) -> tuple[int, int]:
        """(size, mtime in ns; -1 where unknown): what identifies a file's version without reading it."""
        if self.path is not None:
            st = self.path.stat()
            return st.st_size, st.st_mtime_ns
        if self.scheme in ("http", "https"):
            with self._http("HEAD") as answer:
                return int(answer.headers.get("Content-Length", -1)), -1
        import pyarrow.fs as pafs

        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.url}: no such object")
        return int(info.size), int(info.mtime_ns or -1)

    def listing(self) -> dict[str, tuple[int, int]]:
        """Every file below this remote folder: relative name -> (size, mtime in ns), from
        one recursive listing (1,000 objects per request on S3; no request per file)."""
        if self.path is not None or self.scheme in ("http", "https"):
            raise OSError(f"{self.url}: listing is for object storage")
        import pyarrow.fs as pafs

        prefix = self._key + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(self._key, recursive=True, allow_not_found=True))
        return {i.path[len(prefix):]: (int(i.size), int(i.mtime_ns or -1))
                for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)}

    def open(self) -> IO[bytes]:
        """A binary stream of the file, read front to back (raises FileNotFoundError / OSError)."""
        if self.path is not None:
            return self.path.open("rb")
        if self.scheme in ("http", "https"):
            return io.BytesIO(self.read_bytes())
        return self.fs.open_input_stream(self._key)

    def read_bytes(self) -> bytes:
        """The whole file, in one request for object storage."""
        if self.path is not None:
            return self.path.read_bytes()
        if self.scheme in ("http", "https"):
            return self._http_body()
        if self.scheme == "s3":
            return self._s3_get()
        with self.fs.open_input_file(self._key) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file. In object storage the object appears only once its upload
        is complete (one PUT; pyarrow completes a multipart upload at close), so a reader
        sees all of it or nothing."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(data)
            return
        if self.scheme in ("http", "https"):
            raise OSError(f"{self.url}: HTTP locations are read-only")
        with self.fs.open_output_stream(self._key) as f:
            f.write(data)

    def delete(self) -> None:
        """Remove the file (FileNotFoundError when there is none)."""
        if self.path is not None:
            self.path.unlink()
            return
        if self.scheme in ("http", "https"):
            raise OSError(f"{self.url}: HTTP locations are read-only")
        self.fs.delete_file(self._key)

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.open() as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def _http_body(self) -> bytes:
        """GET the whole body; a connection that drops part-way (fewer bytes than the
        server announced, or a reset) is retried with back-off like a failed request."""
        delay = 0.5
        for attempt in range(1, HTTP_ATTEMPTS + 1):
            with self._http("GET") as answer:
                try:
                    return answer.read()
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                    why = _dropped(exc)
            if attempt == HTTP_ATTEMPTS:
                raise NetworkError(f"{why} ({HTTP_ATTEMPTS} tries)")
            delay = _back_off(self.url, why, delay, attempt, HTTP_ATTEMPTS)
        raise AssertionError("unreachable")

    def _http(self, method: str) -> Any:
        """An HTTP answer for this URL; retries connection errors and 5xx with back-off
        (0.5, 1, 2 s); 404 raises FileNotFoundError, other 4xx OSError."""
        delay = 0.5
        for attempt in range(1, HTTP_ATTEMPTS + 1):
            try:
                return urllib.request.urlopen(urllib.request.Request(self.url, method=method), timeout=30)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise FileNotFoundError("not found (HTTP 404)") from None
                if exc.code < 500 or attempt == HTTP_ATTEMPTS:
                    raise (OSError if exc.code < 500 else NetworkError)(f"HTTP {exc.code} {exc.reason}") from None
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt == HTTP_ATTEMPTS:
                    raise NetworkError(str(getattr(exc, "reason", exc))) from None
                why = str(getattr(exc, "reason", exc))
            delay = _back_off(self.url, why, delay, attempt, HTTP_ATTEMPTS)
        raise AssertionError("unreachable")


#: pyarrow's words for an S3 request the store refused (a HEAD has no body, so no code)
_DENIED = re.compile(r"AWS Error (?:ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
                     r"UNKNOWN \(HTTP status 403\)) during (\w+) operation")


#: pyarrow's words for a request the network failed (the SDK has retried it already)
_NETWORK = re.compile(r"AWS Error NETWORK_CONNECTION during (\w+) operation: (.*)")
#: google-cloud-cpp's status in pyarrow's GCS errors: code, message, its error_info
_GCS = re.compile(r"google::cloud::Status\((\w+): (.*?)(?: error_info=\{(.*)\}\)|\)(?:\. Detail|$))")
_GCS_NETWORK = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def obstore_text(exc: BaseException) -> str:
    """An obstore error's message without its debug dump or the store's XML answer."""
    return str(exc).split("\n\nDebug source")[0].split(": <?xml")[0]


def _back_off(url: str, why: str, delay: float, attempt: int, attempts: int) -> float:
    """Log a failed try of `attempts`, wait `delay` seconds; the next wait (twice as long)."""
    log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, why, delay, attempt + 1, attempts)
    time.sleep(delay)
    return delay * 2


def _flag(value: Any) -> bool:
    """A yes/no storage option, given as a bool or as text ("true", "1", "yes")."""
    return str(value).lower() in ("1", "true", "yes")


class NoCredentials(OSError):
    """No link of the AWS credential chain answered (and the request is not anonymous)."""


class _BotocoreChain:
    """obstore's credential provider: botocore's default chain (environment, profile, web
    identity, container, instance role), the one every AWS tool uses. obstore calls it
    when the credentials it holds expire: every 5 minutes, so a role's rotation is seen."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials

    @classmethod
    def find(cls) -> _BotocoreChain:
        import botocore.session

        # botocore says at INFO which link gave credentials, once per process; this module
        # names it on a refusal. Quiet unless someone set that logger's level.
        chain_log = logging.getLogger("botocore.credentials")
        if chain_log.level == logging.NOTSET:
            chain_log.setLevel(logging.WARNING)
        return cls(botocore.session.Session().get_credentials())

    def __call__(self) -> dict[str, Any]:
        from datetime import datetime, timedelta, timezone

        frozen = self.credentials.get_frozen_credentials()
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key, "token": frozen.token,
                "expires_at": datetime.now(timezone.utc) + timedelta(minutes=5)}


def _s3_region(options: Mapping[str, Any], bucket: str) -> str:
    """The region from the options or the environment; for AWS itself (no endpoint), the
    bucket's own region, asked of S3 once (botocore followed S3's redirects; obstore does not)."""
    region = options.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or options.get("endpoint_override"):
        return region or "us-east-1"
    import pyarrow.fs as pafs

    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return "us-east-1"


def _dropped(exc: BaseException) -> str:
    """'connection dropped after N of M bytes' for a body cut short (http.client's
    IncompleteRead: `partial` the bytes read, `expected` those still owed), else the error's
    own words."""
    if isinstance(exc, http.client.IncompleteRead):
        read = len(exc.partial)
        return f"connection dropped after {read:,} of {read + (exc.expected or 0):,} bytes"
    return f"connection dropped mid-body ({exc})"


def storage_error(exc: BaseException) -> str:
    """One line from a storage exception (pyarrow's carry the AWS error and request id); an
    S3 refusal says so, and where this process's credentials came from (never what they are)."""
    text = " ".join(str(exc).split()).split(" (Request ID")[0]
    denied = _DENIED.search(text)
    if denied:
        return f"access denied ({denied[1]}): {aws_credential_source()}"
    network = _NETWORK.search(text)
    if network:
        return f"network error ({network[1]}, {S3_ATTEMPTS} tries): {network[2]}"
    gcs = _GCS.search(text)
    if gcs:  # "network error (GetObjectMetadata, retried): CURL error [7]=Could not connect to server"
        code, message, info = gcs[1], gcs[2], gcs[3] or ""
        function = re.search(r"gcloud-cpp\.(?:retry|source)\.function=(\w+)", info)
        where = f" ({function[1]}{', retried' if 'retry-policy-exhausted' in info else ''})" if function else ""
        last = message.split("with a last message of ", 1)[-1]
        kind = {"PERMISSION_DENIED": "access denied", "UNAUTHENTICATED": "not authenticated"}.get(
            code, "network error" if code in _GCS_NETWORK else code.lower().replace("_", " "))
        return f"{kind}{where}: {last}"
    return text


def is_network_error(exc: BaseException) -> bool:
    """The failure is the network's (dropped, reset, cut short through every retry), not the
    object's: a sample that failed so is worth another try (`--resume`)."""
    gcs = _GCS.search(str(exc))
    return isinstance(exc, NetworkError) or bool(_NETWORK.search(str(exc))) or bool(gcs and gcs[1] in _GCS_NETWORK)


class NetworkError(OSError):
    """A request the network failed through every retry (refused, reset, a body cut short, 5xx)."""


def aws_credential_source(environ: Mapping[str, str] | None = None) -> str:
    """Which link of the AWS SDK's default credential chain would answer here, in words:
    the environment, a web identity token, a profile file, the container endpoint, an
    instance role; or that none would. Names only: no key, not even in part."""
    env = os.environ if environ is None else environ
    if env.get("AWS_ACCESS_KEY_ID"):
        return "the credentials from the environment (AWS_ACCESS_KEY_ID) may not do this"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return "the web identity role (AWS_WEB_IDENTITY_TOKEN_FILE) may not do this"
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    files = [Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"),
             Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if re.search(rf"^\[(profile )?{re.escape(profile)}\]", text, re.MULTILINE):
            return f"the credentials of profile {profile!r} ({path}) may not do this"
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "the container's credentials (AWS_CONTAINER_CREDENTIALS_*) may not do this"
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return ("no credentials found (none in the environment, no profile, no web identity or container "
                "credentials, and the instance metadata service is disabled)")
    return ("no credentials in the environment, a profile or a container; the instance role, if this host "
            "has one, may not do this")
