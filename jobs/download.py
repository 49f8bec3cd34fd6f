"""`rayinfer download coco-val2017|nyu-val --dest D`: the official archives, resumable,
verified, extracted to the layout the readers expect.

- Partial downloads live in `NAME.part` and continue with an HTTP Range request.
- Size and checksum (MD5/SHA-256 where the publisher gives one) are verified before
  an archive is used; a mismatch deletes the part file and says which archive.
- Extraction refuses members that would land outside the destination.
- `--mirror URL` fetches the same file names from another server; `--manifest F`
  replaces the archive list (JSON), e.g. for an internal mirror with its own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(Exception):
    """A download or an archive failed; the message names the archive."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch and what to take out of it."""

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    #: archive members to extract (prefixes); empty = everything
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    archives: tuple[Archive, ...]
    #: paths (relative to dest) that must exist after extraction
    expect: tuple[str, ...] = field(default_factory=tuple)


SPECS = {
    "coco-val2017": DatasetSpec(
        "coco-val2017",
        (
            Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", 815585330,
                    md5="442b8da7639aecaf257c1dceb8ba8c80",
                    sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
            Archive("annotations_trainval2017.zip",
                    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip", 252907541,
                    md5="f4bbac642086de4f52a3fdda2de5fa2c",
                    sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
                    members=("annotations/instances_val2017.json",)),
        ),
        expect=("val2017", "annotations/instances_val2017.json"),
    ),
    # The validation split of sayakpaul/nyu_depth_v2 (FastDepth's val/official/*.h5). The
    # publisher gives no checksum: the size comes from the server and the tar must read whole.
    "nyu-val": DatasetSpec(
        "nyu-val",
        tuple(
            Archive(f"val-00000{i}.tar", f"https://huggingface.co/datasets/sayakpaul/nyu_depth_v2/resolve/main/data/val-00000{i}.tar")
            for i in (0, 1)
        ),
        expect=("val/official",),
    ),
}


def load_manifest(path: Path, name: str) -> DatasetSpec:
    """A DatasetSpec from JSON: {"archives": [{name, url, size, md5, sha256, members}], "expect": [...]}."""
    try:
        data = json.loads(Path(path).read_text())
        archives = tuple(Archive(**{**a, "members": tuple(a.get("members", ()))}) for a in data["archives"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{path}: not a download manifest ({exc})") from None
    return DatasetSpec(name, archives, tuple(data.get("expect", ())))


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def verify(archive: Archive, path: Path) -> None:
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise DownloadError(f"{archive.name}: {size} bytes, expected {archive.size}")
    if archive.md5 or archive.sha256:
        md5, sha = _digests(path)
        if archive.md5 and md5 != archive.md5:
            raise DownloadError(f"{archive.name}: MD5 {md5}, expected {archive.md5}")
        if archive.sha256 and sha != archive.sha256:
            raise DownloadError(f"{archive.name}: SHA-256 {sha}, expected {archive.sha256}")


def fetch(archive: Archive, folder: Path, mirror: str | None = None, attempts: int = 6,
          progress: bool = True, timeout: float = 60.0, backoff_s: float = 2.0, max_backoff_s: float = 60.0) -> Path:
    """Download one archive into `folder`, resuming a `.part` file; verify it.

    A failed connection is retried `attempts - 1` times, waiting `backoff_s`, then twice as
    long each time up to `max_backoff_s` (2, 4, 8, 16, 32 s by default: a network that is
    down for a minute is waited out), saying what failed and how long it waits.
    """
    from tqdm import tqdm

    final = folder / archive.name
    if final.exists():
        try:
            verify(archive, final)
            return final
        except DownloadError as exc:
            log.warning("%s; downloading it again", exc)
            final.unlink()
    part = folder / f"{archive.name}.part"
    url = f"{mirror.rstrip('/')}/{archive.name}" if mirror else archive.url
    for attempt in range(1, attempts + 1):
        start = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if start and response.status != 206:  # the server ignored the range: start over
                    start = 0
                length = response.headers.get("Content-Length")
                total = start + int(length) if length is not None else archive.size
                if archive.size is not None and total is not None and total != archive.size:
                    raise DownloadError(f"{archive.name}: the server offers {total} bytes, expected {archive.size}")
                with part.open("ab" if start else "wb") as f, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, desc=archive.name, disable=not progress
                ) as bar:
                    while block := response.read(CHUNK):
                        f.write(block)
                        bar.update(len(block))
            if total is not None and part.stat().st_size < total:
                raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and archive.size is not None and part.exists() and part.stat().st_size == archive.size:
                break  # already complete
            raise DownloadError(f"{archive.name}: HTTP {exc.code} from {url}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            if attempt == attempts:
                raise DownloadError(f"{archive.name}: {exc} after {attempts} attempts; rerun to resume") from None
            wait = min(backoff_s * 2 ** (attempt - 1), max_backoff_s)
            log.warning("%s: %s (%s); retrying in %g s, resuming what arrived (attempt %d of %d)", archive.name,
                        getattr(exc, "reason", None) or exc, url, wait, attempt + 1, attempts)
            time.sleep(wait)
    try:
        verify(archive, part)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    part.rename(final)
    return final


def _inside(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    if dest.resolve() not in target.parents and target != dest.resolve():
        raise DownloadError(f"archive member {name!r} would be written outside {dest}")
    return target


def extract(archive: Archive, path: Path, dest: Path) -> None:
    """Extract the wanted members of a zip or tar into `dest`, refusing path escapes."""
    wanted = archive.members

    def keep(name: str) -> bool:
        return not wanted or any(name == m or name.startswith(m.rstrip("/") + "/") for m in wanted)

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if keep(info.filename):
                        _inside(dest, info.filename)
                        z.extract(info, dest)
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                members = [m for m in t.getmembers() if keep(m.name)]
                for m in members:
                    _inside(dest, m.name)
                t.extractall(dest, members=members, filter="data")
        else:
            raise DownloadError(f"{archive.name}: neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive.name}: damaged archive ({exc}); delete it and rerun") from None


def download(spec: DatasetSpec, dest: Path, mirror: str | None = None, keep_archives: bool = False,
             progress: bool = True) -> Path:
    """Fetch, verify and extract every archive of `spec` into `dest`; returns `dest`."""
    dest = Path(dest)
    cache = dest / ".downloads"
    cache.mkdir(parents=True, exist_ok=True)
    for archive in spec.archives:
        path = fetch(archive, cache, mirror, progress=progress)
        log.info("extracting %s", archive.name)
        extract(archive, path, dest)
    missing = [p for p in spec.expect if not (dest / p).exists()]
    if missing:
        raise DownloadError(f"after extraction, {dest} lacks {missing}: the archives are not {spec.name}")
    if not keep_archives:
        shutil.rmtree(cache, ignore_errors=True)
    (dest / ".rayinfer-download.json").write_text(json.dumps(
        {"dataset": spec.name, "archives": [asdict(a) for a in spec.archives]}, indent=2))
    return dest


def main_download(name: str, dest: Path, mirror: str | None, manifest: Path | None, keep: bool,
                  quiet: bool) -> int:
    spec = load_manifest(manifest, name) if manifest else SPECS.get(name)
    if spec is None:
        raise DownloadError(f"unknown dataset {name!r}; choose from {sorted(SPECS)}")
    download(spec, dest, mirror, keep_archives=keep, progress=not quiet)
    return 0
