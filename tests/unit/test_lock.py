"""requirements.txt: every resolved package pinned, consistent with pyproject.toml, and exactly
what `make lock` produces (the same pip-compile command, run with --dry-run)."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        found[canonicalize_name(match[1])] = match[2]
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("service", "monitor", "dev"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_requirement_is_pinned_within_its_range():
    locked = pins(LOCK.read_text())
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in the lock: run make lock"
        assert req.specifier.contains(Version(locked[name]), prereleases=True), (
            f"{req.name}=={locked[name]} in the lock is outside {req.specifier}: run make lock")


def test_torch_is_the_pinned_release():
    # the CPU build on local disk (2.13.0+cpu) or the same release from an index, never another
    assert Version(pins(LOCK.read_text())["torch"]).public == "2.13.0"


def test_lock_is_what_make_lock_writes():
    """The header's pip-compile command, rerun with --dry-run against the lock, changes nothing:
    pyproject.toml and the lock agree. Needs the package index (PyPI), as `make lock` does."""
    binary = shutil.which("pip-compile", path=str(Path(sys.executable).parent))
    assert binary, "pip-compile missing: it is a dev dependency (make install)"
    header = re.search(r"^#\s+pip-compile (.+)$", LOCK.read_text(), re.M)
    assert header, "the lock's header does not record its pip-compile command"
    makefile = (ROOT / "Makefile").read_text()
    for flag in header[1].split():
        if flag.startswith("--"):
            name = flag.split("=", 1)[0]
            assert name in makefile, f"the Makefile's lock command lacks {name}"
    cmd = [binary, "--quiet", *header[1].split(), "--dry-run"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        if os.environ.get("CI", "").lower() != "true" and "ConnectionError" in out.stderr:
            pytest.skip("the package index is unreachable")
        pytest.fail(out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if PIN.match(line.strip())]
    assert pins("\n".join(lines)) == pins(LOCK.read_text()), "pyproject.toml changed: run make lock"
