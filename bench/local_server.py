"""The app under uvicorn on a thread of this process, for benchmarks and tests that need a real
socket (the official openai client, load generators in another process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp


@contextmanager
def serve_in_thread(app: ASGIApp, *, start_timeout_s: float = 300.0) -> Iterator[str]:
    """Serve `app` on a free loopback port with its lifespan run; yields its base URL and
    stops it (letting requests in flight finish) when the block exits."""
    import uvicorn

    from engine.vllm_cpu import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ragtune-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(
                f"the API did not start on port {port} within {start_timeout_s:g} s; its log "
                f"above says why"
            )
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=120)
