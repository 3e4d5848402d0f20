"""A small OpenAI-compatible HTTP server standing in for vLLM's, at the boundary: the endpoints
ragtune's vLLM backend calls (/health, /v1/models, /v1/chat/completions whole and streamed),
answering a fixed text in many small pieces so that a proxy can cut a stream mid-answer. HTTP/1.1
with keep-alive and chunked streams, as vLLM's uvicorn answers: the client pools connections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Apples grow on trees in orchards, and keepers prune them in winter. " * 4
PIECE = 8
# Between two streamed pieces: each piece travels in its own TCP segment.
PIECE_GAP_S = 0.005


class OpenAIStub:
    """vLLM's OpenAI server as far as ragtune uses it, on a loopback port."""

    def __init__(self, model: str = "base") -> None:
        self.model = model
        self.chats = 0  # chat completions answered (whole or streamed)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: a whole answer's head and body leave in one write, as uvicorn's do.
            wbufsize = -1

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, b"", "application/json")
                elif self.path == "/v1/models":
                    entry = {"id": stub.model, "object": "model", "root": "/m", "parent": None}
                    self._json(200, {"object": "list", "data": [entry]})
                else:
                    self._json(404, {"error": {"message": f"no {self.path}", "code": 404}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no {self.path}", "code": 404}})
                    return
                stub.chats += 1
                if body.get("stream"):
                    self._stream()
                else:
                    self._json(200, _completion(stub.model))

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in [*_chunks(stub.model), "[DONE]"]:
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(PIECE_GAP_S)
                self.wfile.write(b"0\r\n\r\n")

            def _json(self, status: int, body: Any) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @contextmanager
    def serving(self) -> Iterator[OpenAIStub]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client or proxy that went away mid-answer is what the fault tests do on purpose.
        pass


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 12, "completion_tokens": len(ANSWER.split()), "total_tokens": 0}


def _completion(model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": ANSWER}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "token_ids": [1, 2]}
    return {"id": "chatcmpl-stub", "object": "chat.completion", "model": model,
            "choices": [choice], "usage": _usage()}  # fmt: skip


def _chunks(model: str) -> Iterator[str]:
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "model": model}
    pieces = [ANSWER[i : i + PIECE] for i in range(0, len(ANSWER), PIECE)]
    for i, text in enumerate(pieces):
        finish = "stop" if i == len(pieces) - 1 else None
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        yield json.dumps({**base, "choices": [choice]})
    yield json.dumps({**base, "choices": [], "usage": _usage()})
