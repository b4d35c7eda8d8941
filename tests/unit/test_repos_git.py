"""Git sources: URLs refused by their form, hosts refused by where they resolve (SSRF), and clones
that cannot hang, flood or leak. No test sends a packet beyond this machine: IP literals are
refused before any lookup, names go through a stub resolver (which fails the test if a refusal
needed it), and the clones that run talk to a real git server on a loopback address, admitted
through the allow-list (tests/git_server.py)."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from service.repos.git_remote import RemotePolicy
from service.repos.git_source import GitAccess, check_git_source, check_git_url, clone_git
from service.repos.sources import SourceError
from tests.git_server import git, make_repository, serve

LOOPBACK = RemotePolicy(allowed_hosts=("127.0.0.0/8",))


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was looked up: a literal must be refused without DNS")


def stub(*addresses: str):
    return lambda host, port: list(addresses)


# ---- the URL's form --------------------------------------------------------------------------
@pytest.mark.parametrize("url,message", [
    ("--upload-pack=touch /tmp/pwned", "option"),
    ("-u touch", "option"),
    ("ssh://git@example.com/repo.git", "scheme"),
    ("git://example.com/repo.git", "scheme"),
    ("http://example.com/repo.git", "scheme"),
    ("ext::sh -c touch% /tmp/pwned", "spaces|scheme"),
    ("git@example.com:repo.git", "scheme"),
    ("https://example.com/repo.git --upload-pack=x", "spaces"),
    ("https:///nohost", "host"),
    ("https://user:token@example.com/repo.git", "credentials"),
    ("file://otherhost/srv/repo", "local path"),
    ("file:///etc", "not under an allowed root"),
])
def test_git_urls_refused(url, message, tmp_path):
    with pytest.raises(SourceError, match=message):
        check_git_url(url, [str(tmp_path)])


def test_git_ref_must_be_a_plain_name(tmp_path):
    with pytest.raises(SourceError, match="ref"):
        check_git_url("https://example.com/r.git", [], ref="--upload-pack=x")
    assert check_git_url("https://example.com/r.git", [], ref="release/1.2")


# ---- where the host resolves (SSRF) ----------------------------------------------------------
@pytest.mark.parametrize("url,why", [
    ("https://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("https://127.0.0.1:6391/x.git", "loopback"),
    ("https://127.1/x.git", "loopback"),
    ("https://2130706433/x.git", "loopback"),  # 127.0.0.1 as one number
    ("https://0x7f.0.0.1/x.git", "loopback"),
    ("https://0177.0.0.1/x.git", "loopback"),  # octal
    ("https://0/x.git", "unspecified"),
    ("https://10.1.2.3/x.git", "private"),
    ("https://172.16.0.1/x.git", "private"),
    ("https://192.168.1.1/x.git", "private"),
    ("https://100.64.0.1/x.git", "non-public"),  # carrier-grade NAT
    ("https://224.0.0.1/x.git", "multicast"),
    ("https://[::1]/x.git", "loopback"),
    ("https://[fe80::1]/x.git", "link-local"),
    ("https://[fd00:ec2::254]/x.git", "private"),  # AWS metadata over IPv6
    ("https://[::ffff:169.254.169.254]/x.git", "link-local"),  # IPv4-mapped
    ("https://[64:ff9b::7f00:1]/x.git", "loopback"),  # NAT64
    ("https://[2002:a9fe:a9fe::]/x.git", "link-local"),  # 6to4
    ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.git", "Teredo"),
    ("https://[ff02::1]/x.git", "multicast"),
])
def test_internal_addresses_are_refused_without_a_lookup(url, why):
    with pytest.raises(SourceError, match=why):
        check_git_source(url, GitAccess(), resolver=no_lookup)


def test_a_refusal_names_no_more_than_the_client_sent():
    with pytest.raises(SourceError) as refused:
        check_git_source("https://git.example.com/r.git", GitAccess(),
                         resolver=stub("10.0.0.7"))
    assert "10.0.0.7" not in str(refused.value)  # the internal address is not echoed
    assert "git.example.com" in str(refused.value)


def test_every_resolved_address_must_be_public():
    public = stub("140.82.112.3", "2606:50c0:8000::153")
    remote = check_git_source("https://git.example.com/r.git", GitAccess(), resolver=public)
    assert (remote.host, remote.port, remote.address) == ("git.example.com", 443, "140.82.112.3")
    assert remote.curl_resolve() == "git.example.com:443:140.82.112.3"
    for inside in ("127.0.0.1", "169.254.169.254", "::1", "fd00::5"):
        with pytest.raises(SourceError, match="resolves to"):
            check_git_source("https://git.example.com/r.git", GitAccess(),
                             resolver=stub("140.82.112.3", inside))


def test_an_unresolvable_host_is_refused():
    with pytest.raises(SourceError, match="could not be resolved"):
        check_git_source("https://nowhere.example/r.git", GitAccess(), resolver=stub())


def test_the_allow_list_admits_a_private_git_server_by_name_or_network():
    by_name = GitAccess(remotes=RemotePolicy(allowed_hosts=("git.corp.example",)))
    remote = check_git_source("https://git.corp.example:8443/r.git", by_name,
                              resolver=stub("10.0.0.7"))
    assert remote.curl_resolve() == "git.corp.example:8443:10.0.0.7"
    by_network = GitAccess(remotes=RemotePolicy(allowed_hosts=("10.0.0.0/24",)))
    assert check_git_source("https://git2.corp.example/r.git", by_network,
                            resolver=stub("10.0.0.9")).address == "10.0.0.9"
    with pytest.raises(SourceError, match="private"):  # outside the allowed network
        check_git_source("https://git3.corp.example/r.git", by_network,
                         resolver=stub("10.0.1.9"))


def test_allow_list_only_mode_refuses_other_names_before_any_lookup():
    closed = GitAccess(remotes=RemotePolicy(allowed_hosts=("git.corp.example",),
                                            allow_public=False))
    with pytest.raises(SourceError, match="allow-list"):
        check_git_source("https://github.com/a/b.git", closed, resolver=no_lookup)
    with pytest.raises(SourceError, match="allow-list"):
        check_git_source("https://140.82.112.3/a/b.git", closed, resolver=no_lookup)


def test_an_international_name_must_be_written_in_ascii():
    with pytest.raises(SourceError, match="xn--"):
        check_git_source("https://gït.example/r.git", GitAccess(), resolver=no_lookup)


# ---- clones ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A bare repository with a small and a 3 MB incompressible file, on a TLS git server at
    127.0.0.2 (its certificate names `localhost`)."""
    assert shutil.which("git"), "git is needed for git sources (and in the image: Dockerfile)"
    folder = tmp_path_factory.mktemp("git-server")
    make_repository(folder / "r.git", {"a.py": b"x = 2\n", "big.bin": os.urandom(3_000_000)})
    server, stop = serve(folder, folder, "127.0.0.2")
    yield server
    stop()


def allowed(server, **limits) -> GitAccess:
    return GitAccess(remotes=LOOPBACK, ca_file=str(server.cert), **limits)


def test_an_allowed_https_clone_connects_to_the_address_that_was_checked(served, tmp_path):
    # `localhost` is 127.0.0.1 to the system, but the server listens on 127.0.0.2 only: the
    # clone works only if git connects to the address the check pinned (no DNS rebinding)
    dest = clone_git(served.url("localhost", "r.git"), tmp_path / "clone",
                     access=allowed(served), resolver=stub("127.0.0.2"))
    assert (dest / "a.py").read_text() == "x = 2\n"
    assert not (dest / ".git").exists()


def test_a_clone_larger_than_the_cap_is_stopped_and_removed(served, tmp_path):
    with pytest.raises(SourceError, match="larger than 1000000 bytes"):
        clone_git(served.url("localhost", "r.git"), tmp_path / "clone",
                  access=allowed(served, max_bytes=1_000_000), resolver=stub("127.0.0.2"))
    assert not (tmp_path / "clone").exists()


def test_a_certificate_failure_is_told_without_its_details(served, tmp_path):
    untrusted = GitAccess(remotes=LOOPBACK)  # the server's self-signed CA is not given
    with pytest.raises(SourceError) as failed:
        clone_git(served.url("localhost", "r.git"), tmp_path / "clone", access=untrusted,
                  resolver=stub("127.0.0.2"))
    message = str(failed.value)
    assert message == "git clone failed: the git host's TLS certificate could not be verified"
    assert not (tmp_path / "clone").exists()


def test_a_missing_repository_and_a_missing_ref_are_told_plainly(served, tmp_path):
    with pytest.raises(SourceError, match="not found, or it is not public"):
        clone_git(served.url("localhost", "nope.git"), tmp_path / "c1", access=allowed(served),
                  resolver=stub("127.0.0.2"))
    with pytest.raises(SourceError, match="the ref 'v9' was not found"):
        clone_git(served.url("localhost", "r.git"), tmp_path / "c2", access=allowed(served),
                  ref="v9", resolver=stub("127.0.0.2"))


def test_a_redirect_is_not_followed(tmp_path):
    make_repository(tmp_path / "r.git", {"a.py": b"1\n"})
    server, stop = serve(tmp_path, tmp_path, "127.0.0.3", misbehave="redirect")
    try:
        with pytest.raises(SourceError, match="redirect, which is not followed"):
            clone_git(server.url("localhost", "r.git"), tmp_path / "clone",
                      access=allowed(server), resolver=stub("127.0.0.3"))
    finally:
        stop()


def test_a_host_that_accepts_and_never_answers_is_given_up_on_time(tmp_path):
    server, stop = serve(tmp_path, tmp_path, "127.0.0.4", misbehave="silent")
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="longer than 3 s|stopped sending"):
            clone_git(server.url("localhost", "r.git"), tmp_path / "clone",
                      access=allowed(server, timeout_s=3, stall_s=2),
                      resolver=stub("127.0.0.4"))
    finally:
        stop()
    assert time.monotonic() - started < 10  # git's own default would wait minutes
    assert not (tmp_path / "clone").exists()


def test_a_host_that_refuses_the_connection_fails_at_once(tmp_path):
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.5", 0))
        port = unused.getsockname()[1]
    with pytest.raises(SourceError, match="could not connect to the git host"):
        clone_git(f"https://localhost:{port}/r.git", tmp_path / "clone",
                  access=GitAccess(remotes=LOOPBACK), resolver=stub("127.0.0.5"))


def test_shallow_clone_of_a_file_url(tmp_path):
    origin = tmp_path / "roots" / "origin"
    origin.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=origin)
    (origin / "a.py").write_text("x = 1\n")
    git("add", "a.py", cwd=origin)
    git("commit", "-q", "-m", "one", cwd=origin)
    (origin / "a.py").write_text("x = 2\n")
    git("commit", "-q", "-am", "two", cwd=origin)
    access = GitAccess(allowed_roots=(str(tmp_path / "roots"),))
    dest = clone_git(f"file://{origin}", tmp_path / "work" / "clone", access=access)
    assert (dest / "a.py").read_text() == "x = 2\n"
    assert not (dest / ".git").exists()
    (tmp_path / "roots" / "plain").mkdir()  # a folder, not a repository
    with pytest.raises(SourceError, match="git clone failed"):
        clone_git(f"file://{tmp_path / 'roots' / 'plain'}", tmp_path / "work" / "c2",
                  access=access)
    assert not (tmp_path / "work" / "c2").exists()


def test_settings_reach_the_clone():
    from service.core.settings import BatchSettings

    access = GitAccess.of(BatchSettings(git_allowed_hosts=["git.corp", "10.0.0.0/8"],
                                        git_allow_public_hosts=False, git_timeout_s=7,
                                        git_stall_s=3, max_unpacked_bytes=5,
                                        git_ca_file="/etc/ca.pem"))
    assert access.remotes == RemotePolicy(("git.corp", "10.0.0.0/8"), False)
    assert (access.timeout_s, access.stall_s, access.max_bytes, access.ca_file) == \
        (7, 3, 5, "/etc/ca.pem")


