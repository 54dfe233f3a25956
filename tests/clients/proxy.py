"""A TCP proxy on 127.0.0.1 that can break and stall connections: the way a flaky network looks to a client (or
to a replica, between it and its database)."""

from __future__ import annotations

import asyncio


class BreakingProxy:
    """Forwards every connection to `target`. `break_all()` resets the open connections (new ones are still
    accepted); `cut_next_after(n)` resets the next connection once it has sent `n` bytes to the client."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut_next: int | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections = 0
        self.breaks = 0
        self.bytes_to_client = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def cut_next_after(self, n_bytes: int) -> None:
        self._cut_next = n_bytes

    def stall(self) -> None:
        """A partition: connections stay open but nothing gets through, either way, until `flow()`."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def break_all(self) -> None:
        self.breaks += 1
        for transport in list(self._transports):
            transport.abort()  # RST, not a polite close: the client sees the connection die

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.break_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        budget, self._cut_next = self._cut_next, None
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer.transport, server_writer.transport)
        self._transports.update(pair)
        upstream = asyncio.create_task(self._pipe(client_reader, server_writer, None, pair, to_client=False))
        downstream = asyncio.create_task(self._pipe(server_reader, client_writer, budget, pair, to_client=True))
        self._tasks.update((upstream, downstream))
        try:
            await asyncio.gather(upstream, downstream, return_exceptions=True)
        finally:
            self._tasks.difference_update((upstream, downstream))
            self._transports.difference_update(pair)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: int | None,
        pair: tuple[asyncio.BaseTransport, asyncio.BaseTransport],
        *,
        to_client: bool,
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if budget is not None and len(data) >= budget:
                    data = data[:budget]
                    budget = 0
                elif budget is not None:
                    budget -= len(data)
                writer.write(data)
                if to_client:
                    self.bytes_to_client += len(data)
                await writer.drain()
                if budget == 0:
                    self.breaks += 1
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            for transport in pair:
                transport.abort()
