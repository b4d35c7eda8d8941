"""A batch's git source: the URL checked, then a shallow clone that cannot hang or flood a worker.

URLs: only `https://` and `file://` (the latter under an allowed root, like a path source);
nothing that could be read as an option (`--upload-pack=...`); no credentials (they would be
stored and shown back). An https host must pass service.repos.git_remote (public addresses
only, unless allow-listed), and the clone connects to the very address that was checked.

The clone (`git clone --depth 1 -- URL DIR`, `GIT_ALLOW_PROTOCOL` limited to the same two
schemes, no system or user git config, redirects not followed) runs in its own process group
and is killed when it passes the total time, stalls (no data for `stall_s`), or grows past
the unpacked-size cap on disk: during the clone, not after. Its failures reach the tenant as
fixed sentences; git's own words (which can name proxies, certificates and addresses inside
the deployment) go to the server log only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from service.core.settings import BatchSettings
from service.repos.git_remote import RemotePolicy, RemoteRefused, Resolver, pin
from service.repos.sources import SourceError, resolve_server_path

logger = logging.getLogger(__name__)

GIT_SCHEMES = ("https", "file")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
POLL_S = 0.2


@dataclass(frozen=True)
class GitAccess:
    """Where a clone may go and how long and large it may get."""

    allowed_roots: tuple[str, ...] = ()
    remotes: RemotePolicy = RemotePolicy()
    timeout_s: float = 120
    connect_timeout_s: float = 10
    stall_s: int = 20
    max_bytes: int = 500 * 1024 * 1024
    ca_file: str | None = None

    @classmethod
    def of(cls, settings: BatchSettings) -> GitAccess:
        return cls(tuple(settings.allowed_roots),
                   RemotePolicy(tuple(settings.git_allowed_hosts),
                                settings.git_allow_public_hosts),
                   settings.git_timeout_s, settings.git_connect_timeout_s, settings.git_stall_s,
                   settings.max_unpacked_bytes, settings.git_ca_file)


def check_git_url(url: str, allowed_roots: list[str] | tuple[str, ...],
                  ref: str | None = None) -> str:
    """The URL, if its form is safe to hand to `git clone`; SourceError otherwise. (Where an
    https host may be reached is `check_git_source`'s part.)"""
    if not isinstance(url, str) or not url:
        raise SourceError("the git URL must be a non-empty string")
    if url.startswith("-"):
        raise SourceError("the git URL looks like an option; refused")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise SourceError("the git URL must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in GIT_SCHEMES:
        raise SourceError(f"git URL scheme {parts.scheme or '(none)'!r} is not allowed; use "
                          "https:// or file://")
    if parts.scheme == "https" and not parts.hostname:
        raise SourceError("the https git URL has no host")
    if parts.username or parts.password:
        # it would be stored with the batch and shown back: secrets never go in responses
        raise SourceError("credentials in the git URL are not accepted")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError("a file:// git URL must name a local path (file:///...)")
        resolve_server_path(parts.path, list(allowed_roots))
    if ref is not None and (not _REF.match(ref) or ".." in ref):
        raise SourceError(f"git ref {ref!r} is not a plain branch or tag name")
    return url


def check_git_source(url: str, access: GitAccess, ref: str | None = None,
                     resolver: Resolver | None = None):
    """The URL's form and, for https, its host (resolved, every address checked): the pinned
    remote, or None for file://. SourceError when refused; no connection is made."""
    check_git_url(url, access.allowed_roots, ref)
    if urlsplit(url).scheme != "https":
        return None
    try:
        return pin(url, access.remotes, resolver)
    except RemoteRefused as exc:
        raise SourceError(str(exc)) from None


def clone_git(url: str, dest: Path, *, access: GitAccess, ref: str | None = None,
              resolver: Resolver | None = None) -> Path:
    """Shallow clone of `url` (one commit) into `dest`; returns `dest`."""
    remote = check_git_source(url, access, ref, resolver)
    config = {"core.symlinks": "false", "core.hooksPath": "/dev/null",
              "http.followRedirects": "false",  # a public host cannot bounce us inward
              "http.lowSpeedLimit": "1", "http.lowSpeedTime": str(access.stall_s)}
    if remote is not None:
        _wait_for_accept(remote.address, remote.port, access.connect_timeout_s)
        if remote.curl_resolve():
            config["http.curloptResolve"] = remote.curl_resolve()
        if access.ca_file:
            config["http.sslCAInfo"] = access.ca_file
    argv = ["git"]
    for key, value in config.items():
        argv += ["-c", f"{key}={value}"]
    argv += ["clone", "--depth", "1", "--no-tags", "--single-branch"]
    if ref:
        argv += ["--branch", ref]
    argv += ["--", url, str(dest)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(dest.parent),
           "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": ":".join(GIT_SCHEMES),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_ASKPASS": "/bin/false"}
    try:
        _run_capped(argv, env, dest, access, ref)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    shutil.rmtree(dest / ".git", ignore_errors=True)
    return dest


def _wait_for_accept(address: str, port: int, timeout_s: float) -> None:
    """curl waits minutes for a host that never accepts; we wait `timeout_s`."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            pass
    except TimeoutError:
        raise SourceError(f"the git host did not accept a connection within {timeout_s:g} s") \
            from None
    except OSError:
        raise SourceError("could not connect to the git host") from None


def _run_capped(argv: list[str], env: dict[str, str], dest: Path, access: GitAccess,
                ref: str | None) -> None:
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)  # its children die with it
        deadline = time.monotonic() + access.timeout_s
        try:
            while process.poll() is None:
                time.sleep(POLL_S)
                if time.monotonic() > deadline:
                    raise SourceError(f"git clone took longer than {access.timeout_s:g} s")
                if _tree_bytes(dest) > access.max_bytes:
                    raise SourceError(f"the repository is larger than {access.max_bytes} bytes")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode == 0 and _tree_bytes(dest) > access.max_bytes:  # between polls
            raise SourceError(f"the repository is larger than {access.max_bytes} bytes")
        if process.returncode != 0:
            stderr.seek(0)
            text = stderr.read(64 * 1024).decode("utf-8", "replace")
            logger.warning("git clone failed (exit %d): %s", process.returncode, _mask(text))
            raise SourceError(f"git clone failed: {clone_failure(text, ref)}")


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # git renamed or removed it meanwhile
    return total


# git's words -> what the tenant is told (first match wins); nothing of git's text is echoed
_FAILURES = (
    (re.compile(r"could not resolve host", re.I), "the git host could not be resolved"),
    (re.compile(r"redirect|returned error: 30\d", re.I),
     "the git server answered with a redirect, which is not followed; use the final URL"),
    (re.compile(r"ssl|tls|certificate|gnutls", re.I),
     "the git host's TLS certificate could not be verified"),
    (re.compile(r"operation too slow|timed out|timeout", re.I),
     "the git host stopped sending data"),
    (re.compile(r"failed to connect|couldn't connect|connection refused|connection reset|"
                r"empty reply|recv failure|send failure", re.I),
     "could not connect to the git host"),
    (re.compile(r"remote branch .* not found", re.I), "the ref was not found in the repository"),
    (re.compile(r"not found|error: 40[134]|authentication|could not read username|"
                r"not a git repository|does not appear to be a git repository", re.I),
     "the repository was not found, or it is not public"),
)


def clone_failure(stderr: str, ref: str | None = None) -> str:
    for pattern, message in _FAILURES:
        if pattern.search(stderr):
            if message.startswith("the ref") and ref:
                return f"the ref {ref!r} was not found in the repository"
            return message
    return "the repository could not be cloned"


def _mask(text: str) -> str:
    return re.sub(r"(https://)[^/@\s]+@", r"\1***@", text)
