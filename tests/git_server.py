"""A real git smart-HTTP server over TLS on a loopback address, for clone tests that must never
leave this machine: `git http-backend` behind Python's HTTP server, with a self-signed
certificate made by the openssl command line (for `localhost` and the listening address).

`misbehave` turns it into the hostile servers a clone must survive: "redirect" (every request
answered 302 to another address), "silent" (accepts the connection, then never answers).
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **GIT_ENV})


def make_repository(path: Path, files: dict[str, bytes]) -> Path:
    """A repository with two commits (the clone must see the second), served bare."""
    work = path.with_name(path.name + "-work")
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    for name, data in files.items():
        (work / name).write_bytes(b"old " + data)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    for name, data in files.items():
        (work / name).write_bytes(data)
    git("commit", "-q", "-am", "two", cwd=work)
    git("clone", "-q", "--bare", str(work), str(path), cwd=path.parent)
    return path


def self_signed_certificate(folder: Path, address: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
                    "-addext", f"subjectAltName=DNS:localhost,IP:{address}"],
                   check=True, capture_output=True)
    return cert, key


class _GitHandler(http.server.BaseHTTPRequestHandler):
    project_root: Path
    misbehave: str | None = None

    def log_message(self, *args) -> None:  # quiet in test output
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if self.misbehave == "redirect":
            self.send_response(302)
            self.send_header("Location", "https://127.0.0.1:9/inside.git" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GIT_PROJECT_ROOT": str(self.project_root), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@dataclass
class GitServer:
    address: str
    port: int
    cert: Path

    def url(self, host: str, repository: str) -> str:
        return f"https://{host}:{self.port}/{repository}"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(root: Path, folder: Path, address: str = "127.0.0.1", misbehave: str | None = None):
    """Start the server on `address` (a loopback address); returns (GitServer, stop)."""
    cert, key = self_signed_certificate(folder, address)
    if misbehave == "silent":
        return _silent(address, cert)
    handler = type("Handler", (_GitHandler,), {"project_root": root, "misbehave": misbehave})
    server = _Server((address, 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return GitServer(address, server.server_address[1], cert), stop


def _silent(address: str, cert: Path):
    """Accepts every connection and never sends a byte (a hung host)."""
    listener = socket.create_server((address, 0))
    held: list[socket.socket] = []
    running = threading.Event()
    running.set()

    def accept() -> None:
        listener.settimeout(0.2)
        while running.is_set():
            try:
                held.append(listener.accept()[0])
            except (TimeoutError, OSError):
                time.sleep(0.01)

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        running.clear()
        listener.close()
        for conn in held:
            conn.close()

    return GitServer(address, listener.getsockname()[1], cert), stop
