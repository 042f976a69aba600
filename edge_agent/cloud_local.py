"""A real OpenAI-compatible server on loopback (llama-cpp-python's, with prefill: edge_agent.cloud_server), to stand in for a cloud model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import CloudError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path: Path, *, port: int | None = None, alias: str = "local", n_ctx: int = 4096,
                 n_threads: int | None = None, timeout_s: float = 120.0, log=None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m llama_cpp.server`` on 127.0.0.1 and wait until ``/v1/models`` answers."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise CloudError("the local server needs the 'server' extra: pip install 'edge-agent[server]'", "setup") from None
    port = port or free_port()
    # No --cache: llama-cpp-python's RAM cache stores whole context states and was OOM-killed at
    # 22 GB here; the server's single context already reuses the longest common prompt prefix.
    cmd = [sys.executable, "-m", "edge_agent.cloud_server", "--model", str(model_path), "--host", "127.0.0.1",
           "--port", str(port), "--model_alias", alias, "--n_ctx", str(n_ctx)]
    threads = n_threads or os.cpu_count() or 1  # the server's own default is half the cores
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(proc, base, timeout_s)
    except BaseException:  # a timeout, Ctrl-C or SIGTERM while waiting must not orphan the server
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise
    return proc, base


def _wait_until_serving(proc: subprocess.Popen, base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CloudError(f"the local server exited with code {proc.returncode}: check the model file", "setup")
        try:
            with urllib.request.urlopen(base + "/models", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise CloudError(f"the local server did not answer within {timeout_s:.0f}s", "setup")
