"""Where a batch's repository comes from, made safe: an uploaded archive, a directory under an
allow-listed server root, or a shallow git clone.

Everything here refuses hostile input with `SourceError`, whose message is the client's to read
(the API answers 4xx with it; a scheduled batch records it as its error). An archive is checked
member by member before a byte is written, and written only below its own directory:

- absolute paths, `..` parts, drive letters and backslashes: refused (path traversal);
- symbolic and hard links: refused when their target leaves the archive, otherwise left out
  (ingestion never follows links) and listed as skipped (`link`);
- devices and FIFOs: left out, and listed among the batch's skipped files (`special_file`);
- archive bombs: the unpacked size is capped (`max_unpacked_bytes`) and so is its ratio to the
  compressed size (`max_ratio`, past 10 MB), counted on the bytes really written as well as on
  the sizes the headers declare;
- more than `max_entries` members, or a corrupt archive: refused.

Git sources: service.repos.git_source (the URL, the clone) and service.repos.git_remote (which
hosts a clone may reach).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.core.settings import BatchSettings

RATIO_FLOOR_BYTES = 10 * 1024 * 1024  # small archives of text compress well: no ratio check
COPY_CHUNK = 1024 * 1024


class SourceError(ValueError):
    """The source is unusable or hostile; the message says why (shown to the client)."""


@dataclass(frozen=True)
class Limits:
    max_archive_bytes: int
    max_unpacked_bytes: int
    max_ratio: float
    max_entries: int

    @classmethod
    def of(cls, settings: BatchSettings) -> Limits:
        return cls(settings.max_archive_bytes, settings.max_unpacked_bytes, settings.max_ratio,
                   settings.max_entries)


# ---- archives --------------------------------------------------------------------------------
def archive_kind(filename: str, data: bytes) -> str:
    """'zip' or 'tar', by the bytes first (a name can lie), then by the name."""
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return "zip"
    if data[:2] == b"\x1f\x8b" or (len(data) > 262 and data[257:262] == b"ustar"):
        return "tar"
    name = filename.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise SourceError(f"{filename!r} is not a .tar.gz or .zip archive")


def safe_member_path(name: str) -> PurePosixPath:
    """The member's path relative to the archive's root, or SourceError if it could escape."""
    if "\x00" in name or "\\" in name:
        raise SourceError(f"archive member {name!r}: backslashes and NUL are not allowed in paths")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise SourceError(f"archive member {name!r}: absolute paths are not allowed")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise SourceError(f"archive member {name!r}: '..' (path traversal) is not allowed")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _link_stays_inside(member: PurePosixPath, target: str, *, hard: bool) -> bool:
    """Whether a link's target resolves inside the archive (hard links name archive paths,
    symbolic ones are relative to the link's folder)."""
    if not target or target.startswith("/") or "\\" in target or re.match(r"^[A-Za-z]:", target):
        return False
    base = [] if hard else list(member.parent.parts)
    for part in PurePosixPath(target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                return False
            base.pop()
        else:
            base.append(part)
    return True


class _Budget:
    """Counts unpacked bytes against the caps, as declared and as written."""

    def __init__(self, limits: Limits, compressed: int):
        self.limits, self.compressed, self.total = limits, max(compressed, 1), 0

    def add(self, size: int) -> None:
        self.total += size
        if self.total > self.limits.max_unpacked_bytes:
            raise SourceError(f"the archive unpacks to more than {self.limits.max_unpacked_bytes} "
                              "bytes (archive bomb?)")
        if (self.total > RATIO_FLOOR_BYTES
                and self.total / self.compressed > self.limits.max_ratio):
            raise SourceError(f"the archive unpacks to over {self.limits.max_ratio:.0f} times its "
                              "compressed size (archive bomb?)")


def _copy_capped(src, dest_path: Path, declared: int, budget: _Budget) -> None:
    written = 0
    with open(dest_path, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > declared:  # the header lied about the size
                raise SourceError(f"archive member {dest_path.name!r} is larger than its header "
                                  "says (corrupt or hostile archive)")
            out.write(chunk)


@dataclass(frozen=True)
class Unpacked:
    """An unpacked repository: its root, and the members left out, as (path relative to the
    root, reason) like ingestion's skipped files."""

    root: Path
    left_out: list[tuple[str, str]]


def extract_archive(data: bytes, filename: str, dest: Path, limits: Limits) -> Unpacked:
    """Unpack `data` into the empty directory `dest`; the repository root is the single
    top-level folder, if the archive has one, else `dest`."""
    if len(data) > limits.max_archive_bytes:
        raise SourceError(f"the archive is larger than {limits.max_archive_bytes} bytes")
    if not data:
        raise SourceError("the archive is empty")
    dest.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(filename, data)
    try:
        if kind == "zip":
            left_out = _extract_zip(data, dest, limits)
        else:
            left_out = _extract_tar(data, dest, limits)
    except SourceError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError,
            NotImplementedError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise SourceError(f"the archive {filename!r} is corrupt or unreadable "
                          f"({type(exc).__name__})") from None
    entries = [p for p in dest.iterdir()]
    root = dest
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        root = entries[0]
    top = PurePosixPath(root.relative_to(dest).as_posix())
    return Unpacked(root, [(_below(rel, top), reason) for rel, reason in left_out])


def _below(rel: PurePosixPath, top: PurePosixPath) -> str:
    """`rel` as a path below the repository root `top` (a member beside it keeps its path)."""
    if str(top) != "." and rel.parts[:len(top.parts)] == top.parts:
        return str(PurePosixPath(*rel.parts[len(top.parts):]))
    return str(rel)


def _target(dest: Path, rel: PurePosixPath) -> Path:
    path = dest.joinpath(*rel.parts)
    # belt and braces: the normalised path must stay below dest
    if os.path.commonpath([os.path.abspath(path), os.path.abspath(dest)]) != os.path.abspath(dest):
        raise SourceError(f"archive member {str(rel)!r} would land outside its directory")
    return path


def _extract_tar(data: bytes, dest: Path, limits: Limits) -> list[tuple[PurePosixPath, str]]:
    budget = _Budget(limits, len(data))
    left_out: list[tuple[PurePosixPath, str]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        count = 0
        for member in tar:  # streamed: a header bomb stops at max_entries
            count += 1
            if count > limits.max_entries:
                raise SourceError(f"the archive holds more than {limits.max_entries} entries")
            rel = safe_member_path(member.name)
            if member.issym() or member.islnk():
                if not _link_stays_inside(rel, member.linkname, hard=member.islnk()):
                    kind = "hard link" if member.islnk() else "symbolic link"
                    raise SourceError(f"archive member {member.name!r}: a {kind} to "
                                      f"{member.linkname!r}, outside the archive")
                left_out.append((rel, "link"))  # ingestion never follows links
                continue
            if str(rel) == ".":
                continue
            path = _target(dest, rel)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():  # devices, FIFOs: nothing a repository needs
                left_out.append((rel, "special_file"))
                continue
            budget.add(member.size)
            path.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src:
                _copy_capped(src, path, member.size, budget)
            os.chmod(path, 0o644)
    return left_out


def _extract_zip(data: bytes, dest: Path, limits: Limits) -> list[tuple[PurePosixPath, str]]:
    budget = _Budget(limits, len(data))
    left_out: list[tuple[PurePosixPath, str]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise SourceError(f"the archive holds more than {limits.max_entries} entries")
        for info in infos:
            rel = safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = archive.read(info)[:4096].decode("utf-8", "replace")
                if not _link_stays_inside(rel, target, hard=False):
                    raise SourceError(f"archive member {info.filename!r}: a symbolic link to "
                                      f"{target!r}, outside the archive")
                left_out.append((rel, "link"))
                continue
            if str(rel) == ".":
                continue
            path = _target(dest, rel)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            budget.add(info.file_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src:
                _copy_capped(src, path, info.file_size, budget)
    return left_out


# ---- server paths ----------------------------------------------------------------------------
def resolve_server_path(path: str, allowed_roots: list[str]) -> Path:
    """`path` with every link resolved, if it is a directory under an allowed root."""
    if not allowed_roots:
        raise SourceError("server paths are disabled (no NAMM_BATCHES__ALLOWED_ROOTS configured)")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SourceError("the path must be a non-empty string")
    resolved = Path(os.path.realpath(path))
    for root in allowed_roots:
        real_root = Path(os.path.realpath(root))
        if resolved == real_root or real_root in resolved.parents:
            if not resolved.is_dir():
                raise SourceError(f"{path!r} is not a directory")
            return resolved
    raise SourceError(f"{path!r} is not under an allowed root")
