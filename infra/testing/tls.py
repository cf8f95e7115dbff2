"""A TLS terminator on 127.0.0.1 in front of a plaintext broker, for tests of flywheel's clients over TLS.

The embedded broker (Tansu) speaks plaintext only. `Terminator` accepts TLS connections with a server certificate
and forwards the decrypted bytes to the broker, as a TLS listener of a real cluster (or a proxy in front of one)
would. The broker must advertise the terminator's address (`infra.broker.start(..., advertised=...)`): Kafka clients
connect to whatever address the metadata names, and would otherwise go around the terminator in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading

HOST = "127.0.0.1"


class Terminator:
    """Listens on `port` (a free one, known as soon as it is built) with `context`, forwards each connection to
    `HOST:upstream_port`. `start()` and `stop()` run its event loop in a daemon thread. `connections` counts the
    connections whose TLS handshake succeeded (each one forwarded): a refused client adds none."""

    def __init__(self, context: ssl.SSLContext, upstream_port: int) -> None:
        self.context = context
        self.upstream_port = upstream_port
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, HOST, 0, ssl=context))
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-terminator", daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(256 * 1024):
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def start(self) -> Terminator:
        self._thread.start()
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Terminator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
