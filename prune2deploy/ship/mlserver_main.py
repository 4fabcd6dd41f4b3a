"""MLServer's `start`, run by `p2d serve` in the serving environment, with what an operator needs
around it (MLServer 1.7.1 has no setting for any of these):

- it dies with its parent: a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG, SIGTERM)`), and
  a watchdog that stops the server when the parent process is gone (a SIGKILLed or OOM-killed
  `p2d serve` leaves nothing serving on its port);
- the HTTP body is capped (`--max-body` bytes): a larger body is answered 413 before it is read
  (by its Content-Length; a chunked body is counted as it arrives), so one request cannot
  exhaust memory;
- gRPC is off unless a port is given (`--grpc`): only the ports `p2d serve` reports listen.

    python -m prune2deploy.ship.mlserver_main SETTINGS_DIR --parent PID --max-body N [--grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, said by its Content-Length
    (uvicorn holds a body to that length) or, for a chunked body, counted while it is buffered."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(send, receive)
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._refuse(send, receive, message)
            if not message.get("more_body"):
                break
        whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, receive, message=None):
        # the rest of the body is read and dropped (nothing kept), so the client, still sending,
        # reads the 413 rather than a reset connection
        while message is None or (message["type"] == "http.request" and message.get("more_body")):
            message = await receive()
        said = f"request body over {self.max_bytes} bytes (the limit of p2d serve --max-body-mb)"
        body = json.dumps({"error": said}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _NoGRPC:
    def __init__(self, *args, **kwargs):
        pass

    async def start(self):
        pass

    async def stop(self, sig=None):
        pass


async def watchdog(parent: int, server) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    await server.stop(signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--max-body", type=int, required=True)
    ap.add_argument("--grpc", action="store_true")
    args = ap.parse_args()
    die_with_parent(args.parent)

    import mlserver.rest.server as rest
    import mlserver.server as mls
    from mlserver.cli.serve import load_settings

    create_app = rest.create_app

    def capped_app(*a, **kw):
        app = create_app(*a, **kw)
        app.add_middleware(BodyLimit, max_bytes=args.max_body)
        return app

    rest.create_app = capped_app
    if not args.grpc:
        mls.GRPCServer = _NoGRPC

    async def start():
        settings, models = await load_settings(args.folder)
        server = mls.MLServer(settings)
        guard = asyncio.ensure_future(watchdog(args.parent, server))
        try:
            await server.start(models)
        finally:
            guard.cancel()

    asyncio.run(start())


if __name__ == "__main__":
    main()
