"""Batch sources refuse hostile input with a clear SourceError and write nothing outside their
directory: path traversal, absolute paths, links pointing out, archive bombs, too many entries,
corrupt archives, paths outside the allowed roots; devices, FIFOs and links are left out and
listed. A well-formed archive and path work. (Git sources: test_repos_git.py.)"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from service.repos.sources import (
    Limits,
    SourceError,
    extract_archive,
    resolve_server_path,
)

LIMITS = Limits(max_archive_bytes=5_000_000, max_unpacked_bytes=20_000_000, max_ratio=100.0,
                max_entries=50)


def make_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def make_zip(entries: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture
def box(tmp_path) -> tuple[Path, Path]:
    """(destination, its parent): nothing may appear in the parent besides the destination."""
    parent = tmp_path / "jail"
    parent.mkdir()
    return parent / "dest", parent


def only_dest_in(parent: Path) -> None:
    assert {p.name for p in parent.iterdir()} <= {"dest"}
    assert not (parent.parent / "evil.txt").exists()


def test_a_plain_archive_unpacks_to_its_top_folder(box):
    dest, _ = box
    data = make_tar([("repo/pkg/a.py", b"import os\n"), ("repo/README.md", b"# hi\n"),
                     link("repo/pkg/alias.py", "a.py")])
    unpacked = extract_archive(data, "repo.tar.gz", dest, LIMITS)
    root = unpacked.root
    assert root == dest / "repo"
    assert unpacked.left_out == [("pkg/alias.py", "link")]
    assert (root / "pkg" / "a.py").read_bytes() == b"import os\n"
    assert not (root / "pkg" / "alias.py").exists()  # links inside are left out, not followed
    zroot = extract_archive(make_zip([("x/y.py", b"print(1)\n")]), "r.zip", box[1] / "z",
                            LIMITS).root
    assert (zroot / "y.py").read_text() == "print(1)\n"


def test_devices_and_fifos_are_left_out_and_listed_with_their_reason(box):
    dest, _ = box
    specials = []
    for name, kind in (("repo/dev/tty0", tarfile.CHRTYPE), ("repo/dev/sda", tarfile.BLKTYPE),
                       ("repo/pipe", tarfile.FIFOTYPE)):
        info = tarfile.TarInfo(name)
        info.type = kind
        specials.append(info)
    unpacked = extract_archive(make_tar([("repo/a.py", b"x = 1\n"), *specials]),
                               "repo.tar.gz", dest, LIMITS)
    assert (unpacked.root / "a.py").read_text() == "x = 1\n"
    assert sorted(unpacked.left_out) == [("dev/sda", "special_file"),
                                         ("dev/tty0", "special_file"),
                                         ("pipe", "special_file")]
    assert not (unpacked.root / "pipe").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "repo/../../evil.txt", "/tmp/evil.txt",
                                  "C:/evil.txt", "repo\\..\\..\\evil.txt"])
def test_tar_path_traversal_and_absolute_paths_are_refused(box, name):
    dest, parent = box
    data = make_tar([("repo/ok.py", b"x = 1\n"), (name, b"pwned")])
    with pytest.raises(SourceError, match="path|backslash"):
        extract_archive(data, "x.tar.gz", dest, LIMITS)
    only_dest_in(parent)
    assert not dest.exists()  # a refused archive leaves nothing behind


@pytest.mark.parametrize("name", ["../evil.txt", "/evil.txt", "a/../../evil.txt"])
def test_zip_path_traversal_is_refused(box, name):
    dest, parent = box
    with pytest.raises(SourceError, match="path"):
        extract_archive(make_zip([("ok.py", b"1"), (name, b"pwned")]), "x.zip", dest, LIMITS)
    only_dest_in(parent)


@pytest.mark.parametrize("entry", [link("repo/passwd", "/etc/passwd"),
                                   link("repo/up", "../../evil.txt"),
                                   link("repo/deep/x", "../../../evil.txt"),
                                   link("repo/hard", "../evil.txt", hard=True),
                                   link("repo/hard2", "/etc/passwd", hard=True)])
def test_links_pointing_out_are_refused(box, entry):
    dest, parent = box
    data = make_tar([("repo/ok.py", b"x = 1\n"), entry, ("repo/up", b"written through?")])
    with pytest.raises(SourceError, match="link"):
        extract_archive(data, "x.tar.gz", dest, LIMITS)
    only_dest_in(parent)


def test_zip_symlink_pointing_out_is_refused(box):
    dest, parent = box
    with pytest.raises(SourceError, match="symbolic link"):
        extract_archive(make_zip([("a.py", b"1")], symlinks={"evil": "../../etc"}), "x.zip",
                        dest, LIMITS)
    only_dest_in(parent)


def test_archive_bomb_size_cap(box):
    dest, _ = box
    small = Limits(5_000_000, max_unpacked_bytes=1_000_000, max_ratio=1e9, max_entries=50)
    data = make_tar([("repo/zeros.py", bytes(2_000_000))])
    assert len(data) < 10_000
    with pytest.raises(SourceError, match="bomb"):
        extract_archive(data, "bomb.tar.gz", dest, small)
    with pytest.raises(SourceError, match="bomb"):
        extract_archive(make_zip([("zeros.py", bytes(2_000_000))]), "bomb.zip", dest, small)
    assert not dest.exists()


def test_archive_bomb_ratio_cap(box):
    dest, _ = box
    # 12 MB of zeros in ~12 kB: far above a ratio of 100, below the size cap
    data = make_tar([("repo/zeros.py", bytes(12_000_000))])
    with pytest.raises(SourceError, match="times its compressed size"):
        extract_archive(data, "bomb.tar.gz", dest, LIMITS)
    with pytest.raises(SourceError, match="times its compressed size"):
        extract_archive(make_zip([("z.py", bytes(12_000_000))]), "bomb.zip", dest, LIMITS)


def test_too_many_entries(box):
    dest, _ = box
    entries = [(f"repo/f{i}.py", b"x\n") for i in range(LIMITS.max_entries + 1)]
    with pytest.raises(SourceError, match="more than 50 entries"):
        extract_archive(make_tar(entries), "many.tar.gz", dest, LIMITS)
    with pytest.raises(SourceError, match="more than 50 entries"):
        extract_archive(make_zip(entries), "many.zip", dest, LIMITS)


@pytest.mark.parametrize("data,name", [
    (b"\x1f\x8b\x08\x00" + os.urandom(200), "broken.tar.gz"),
    (make_tar([("repo/a.py", b"x = 1\n" * 1000)])[:-40], "truncated.tar.gz"),
    (make_zip([("a.py", b"x = 1\n" * 1000)])[:60], "truncated.zip"),
    (b"just some text, not an archive", "notes.txt"),
    (b"", "empty.zip"),
])
def test_corrupt_or_unknown_archives_are_refused(box, data, name):
    dest, parent = box
    with pytest.raises(SourceError):
        extract_archive(data, name, dest, LIMITS)
    only_dest_in(parent)


def test_oversized_upload_is_refused(box):
    dest, _ = box
    with pytest.raises(SourceError, match="larger than"):
        extract_archive(b"PK\x03\x04" + bytes(100), "x.zip", dest,
                        Limits(50, 1_000_000, 100.0, 10))


# ---- server paths ----------------------------------------------------------------------------
def test_server_paths_stay_under_the_allowed_roots(tmp_path):
    root = tmp_path / "repos"
    (root / "one").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_server_path(str(root / "one"), [str(root)]) == (root / "one").resolve()
    for bad in (str(tmp_path / "secret"), str(root / "escape"), str(root / ".." / "secret"),
                "/etc"):
        with pytest.raises(SourceError, match="not under an allowed root"):
            resolve_server_path(bad, [str(root)])
    with pytest.raises(SourceError, match="disabled"):
        resolve_server_path(str(root / "one"), [])
    (root / "file.py").write_text("x")
    with pytest.raises(SourceError, match="not a directory"):
        resolve_server_path(str(root / "file.py"), [str(root)])
