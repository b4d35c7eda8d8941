"""A clean stop of one uvicorn API process (issue 23, item 7).

On SIGTERM the process first gives notice: for `drain_notice_s` every new request is answered
503 and every answer (in-flight ones included) carries `Connection: close`, so keep-alive
clients leave instead of sending on a connection the server is about to close (which a client
sees as a reset with no answer). Then uvicorn's own shutdown runs: the listener closes (new
connections are refused), open requests finish, the process exits.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time

from starlette.responses import JSONResponse

# Set in this process on SIGTERM; read by every request of this uvicorn process.
draining = threading.Event()

_CLOSE = (b"connection", b"close")


class DrainMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): it must not start a second response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if draining.is_set():
            refusal = JSONResponse(
                {"detail": "the server is shutting down; retry shortly"}, status_code=503,
                headers={"Connection": "close", "Retry-After": "1"})
            return await refusal(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start" and draining.is_set():
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        return await self.app(scope, receive, send_closing)


# Linux: SO_ATTACH_FILTER with a one-instruction classic BPF program, "return 0" (drop).
_SO_ATTACH_FILTER = 26
_DROP_ALL = (ctypes.c_uint8 * 8)(*struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K, k=0
_BACKLOG_EMPTIED_S = 0.2


def stop_new_connections(sockets: list[socket.socket]) -> None:
    """Drop new SYNs on the listening socket, so that closing it resets no queued connection.

    Closing a listening socket resets every connection still in its accept queue: clients that
    had already sent a request would see a reset. With every SYN dropped, the queue only
    empties (uvicorn accepts and answers what is there); a client's retried SYN then meets the
    closed port and is refused.
    """
    prog = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)
        except OSError:  # not Linux, or already closed: uvicorn's plain close
            pass


def start_draining(then, notice_s: float, sockets: list[socket.socket] | None = None) -> None:
    """Refuse new requests now; after `notice_s` stop new connections, let the accept queue
    empty, then call `then()` (uvicorn's exit: close the listener, finish open requests)."""
    draining.set()

    def finish() -> None:
        time.sleep(max(0.0, notice_s))
        if sockets:
            stop_new_connections(sockets)
            time.sleep(_BACKLOG_EMPTIED_S)
        then()

    threading.Thread(target=finish, name="drain", daemon=True).start()
