"""Test isolation: every test gets its own database, config and cache dirs; the real model is shared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROBE = "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own DB path and app/cache dirs, so nothing leaks between tests."""
    monkeypatch.setenv("EDGE_AGENT_DB", str(tmp_path / "edge.db"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", os.environ.get("HOME", str(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One llama.cpp thread per process: the suite runs a model server beside the model under test,
    # and llama.cpp's spinning thread pools slow to a crawl when they outnumber the cores.
    monkeypatch.setenv("EDGE_AGENT_THREADS", "1")
    # The suite runs on SmolLM2 whatever is installed: without this, a machine with the 0.5B's part packages
    # would run every test that passes no --model on the 0.5B (the default picks the best preset installed).
    monkeypatch.setenv("EDGE_AGENT_MODEL", "smollm2-135m")
    yield


@pytest.fixture(scope="session")
def smol_path() -> Path:
    from edge_agent.presets import resolve_model

    return resolve_model("smollm2-135m")[1]


@pytest.fixture(scope="session")
def smol(smol_path):
    """One loaded SmolLM2 context shared by the tests that drive the model directly."""
    from edge_agent.local import LocalModel

    model = LocalModel(smol_path, "smollm2-135m", n_ctx=2048, n_threads=1)
    model.llm  # load now
    yield model
    model.close()


@pytest.fixture
def db(tmp_path):
    from store import open_db

    database = open_db(tmp_path / "unit.db")
    yield database
    database.close()


def popen_interruptible(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` whose child starts with SIGINT's default handler, as it would from a terminal.

    A non-interactive shell starts a background job (``pytest &``) with SIGINT ignored, and an ignored signal
    stays ignored across exec, so a child would never see the Ctrl-C a test sends. A caught signal is reset to
    the default on exec: catching it here for the moment of the spawn gives the child the default handler."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, old)


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def llama_server(smol_path):
    """The real llama.cpp OpenAI-compatible server on loopback, serving the embedded model as 'local'."""
    from edge_agent.cloud_local import start_server

    proc, base = start_server(smol_path, alias="local", n_ctx=2048, n_threads=1)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def anthropic_relay(llama_server):
    from tests.servers import AnthropicRelay

    relay = AnthropicRelay(llama_server)
    yield relay
    relay.close()


@pytest.fixture
def fault_server():
    from tests.servers import FaultServer

    servers = []

    def make(mode: str, hang_s: float = 5.0, replies: list[str] | None = None):
        s = FaultServer(mode, hang_s, replies)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
