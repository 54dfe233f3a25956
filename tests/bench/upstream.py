"""A paced model server speaking Ollama's wire format, in a process of its own (`make bench`'s upstream).

    python -m tests.bench.upstream --port 0

`POST /api/chat` streams NDJSON chunks whose content is the time each token was emitted (see
clock_provider.py), on an absolute schedule: the last user message says `rate=<tokens/s> tokens=<n>`.
`GET /api/tags` lists the bench model. Prints `READY <port>` once serving. Built on aiohttp's server so that
1,000 paced streams cost it little CPU next to the service being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import orjson
from aiohttp import web

from tests.bench.clock_provider import MODEL, stamp

CREATED = "2025-01-01T00:00:00Z"


def parse(content: str) -> tuple[float, int]:
    fields = dict(part.split("=", 1) for part in content.split() if "=" in part)
    return float(fields.get("rate", "0")), int(fields.get("tokens", "1"))


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    rate, tokens = parse(body["messages"][-1]["content"])
    limit = (body.get("options") or {}).get("num_predict")
    if isinstance(limit, int) and limit >= 0:
        tokens = min(tokens, limit)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    interval = 1.0 / rate if rate > 0 else 0.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(tokens):
        if interval:
            delay = start + (i + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk = {"model": MODEL, "created_at": CREATED, "message": {"role": "assistant", "content": stamp()}}
        await response.write(orjson.dumps({**chunk, "done": False}) + b"\n")
    final = {
        "model": MODEL,
        "created_at": CREATED,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 1,
        "eval_count": tokens,
    }
    await response.write(orjson.dumps(final) + b"\n")
    await response.write_eof()
    return response


async def tags(_request: web.Request) -> web.Response:
    model = {
        "name": MODEL,
        "model": MODEL,
        "modified_at": CREATED,
        "size": 1,
        "digest": "0" * 64,
        "details": {"family": "fake", "parameter_size": "0", "quantization_level": "none"},
    }
    return web.json_response({"models": [model]})


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    server = site._server
    assert server is not None
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
