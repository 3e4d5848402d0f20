"""JSON-schema constrained decoding for the embedded engine, with xgrammar (vLLM's default)."""

from __future__ import annotations

import json
import threading
from typing import Any

from ragtune.errors import InvalidInput


class GrammarCache:
    """Compiles each distinct schema once; hands out a fresh logits processor per request."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._compiler: Any = None
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()

    def processor(self, schema: dict[str, Any]) -> Any:
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size
                )
                self._compiler = xgr.GrammarCompiler(info)
            compiled = self._compiled.get(key)
            if compiled is None:
                try:
                    # Compact JSON, as vLLM compiles it with disable_any_whitespace: the two
                    # engines then allow exactly the same token sequences.
                    compiled = self._compiler.compile_json_schema(
                        key, any_whitespace=False, separators=(",", ":")
                    )
                except (RuntimeError, ValueError) as exc:
                    raise InvalidInput(f"the JSON schema cannot be used: {exc}") from exc
                self._compiled[key] = compiled
        return LogitsProcessor(compiled)
