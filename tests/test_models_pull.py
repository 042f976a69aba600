"""``edge-agent models pull`` against a loopback stand-in of the Hub (tests/hub_server.py): a good file is
installed, hashed, registered and resolvable; every failure is one line, exit 2, and leaves nothing that
``--model`` would resolve. The fake GGUF is a few KiB of bytes behind the magic: nothing here loads it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent import presets
from edge_agent.errors import ModelError
from tests.conftest import popen_interruptible, run_cli
from tests.hub_server import COMMIT, FakeHub, HubFile

BLOB = b"GGUF" + bytes(range(256)) * 40  # ~10 KiB: a GGUF magic, then noise
SHA = hashlib.sha256(BLOB).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The models dir (EDGE_AGENT_CACHE) and a private HF home, for this test only."""
    monkeypatch.setenv("EDGE_AGENT_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # stderr is then our one line alone
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "models"


@pytest.fixture
def hub(monkeypatch):
    servers = []

    def make(files: dict[str, HubFile]) -> FakeHub:
        server = FakeHub(files)
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        return server

    yield make
    for s in servers:
        s.close()


def one_line_refusal(r, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def nothing_installed(cache: Path, name: str) -> None:
    """No registered name, no GGUF left under the models dir, no staging left behind."""
    assert name not in presets.read_registry()
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"GGUF"], list(cache.rglob("*"))
    with pytest.raises(ModelError):
        presets.resolve_model(name)


def test_pull_installs_verifies_and_registers(cache, hub, monkeypatch):
    server = hub({"org/repo/Tiny-Q4.gguf": HubFile(BLOB)})
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    r = run_cli("models", "pull", "org/repo/Tiny-Q4.gguf", "--json")  # HF_HUB_OFFLINE=1 is set: pull goes online
    assert r.returncode == 0, r.stderr.decode()
    record = json.loads(r.stdout)
    assert record["name"] == "tiny-q4" and record["sha256"] == SHA and record["sha256_source"] == "hub"
    assert record["revision"] == COMMIT and record["size_bytes"] == len(BLOB)
    path = Path(record["path"])
    assert path.parent == cache / "pulled" and path.read_bytes() == BLOB
    assert presets.read_registry()["tiny-q4"]["sha256"] == SHA
    assert presets.resolve_model("tiny-q4") == ("tiny-q4", path)
    assert not list((cache / "pulled" / ".staging").iterdir())
    # HF_TOKEN reached the hub; the download was pinned to the commit the HEAD reported
    heads = [h for m, p, h in server.requests if m == "HEAD"]
    assert heads and all(h.get("authorization") == "Bearer hf_secret_test_token" for h in heads)
    assert server.gets("/cdn/org/repo/Tiny-Q4.gguf")
    assert any(f"/resolve/{COMMIT}/" in p for _, p, _ in server.requests)
    rows = json.loads(run_cli("models", "--json").stdout)
    row = next(r for r in rows if r["name"] == "tiny-q4")
    assert row["kind"] == "pulled" and row["installed"] and row["path"] == str(path) and not row["default"]


def test_pull_text_output_and_progress_on_stderr(cache, hub, monkeypatch):
    hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    r = run_cli("models", "pull", "org/repo/tiny.gguf", "--name", "mine", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["name"] == "mine"  # stdout is the record alone, whatever the bar printed
    r = run_cli("models", "pull", "org/repo/tiny.gguf", "--name", "mine")  # a re-pull replaces it
    assert r.returncode == 0 and b"pulled mine:" in r.stdout and b"--model mine" in r.stdout
    assert list(presets.read_registry()) == ["mine"]


def test_truncated_body_installs_nothing(cache, hub):
    hub({"org/repo/tiny.gguf": HubFile(BLOB, short=len(BLOB) // 2)})
    r = run_cli("models", "pull", "org/repo/tiny.gguf")
    one_line_refusal(r, "download of org/repo/tiny.gguf failed", "nothing was installed")
    nothing_installed(cache, "tiny")


def test_connection_cut_mid_body_installs_nothing(cache, hub):
    server = hub({"org/repo/tiny.gguf": HubFile(BLOB, cut=3000)})
    r = run_cli("models", "pull", "org/repo/tiny.gguf", timeout=120)
    one_line_refusal(r, "nothing was installed")
    assert len(server.gets("/cdn/")) > 1  # huggingface_hub tried to resume before giving up
    nothing_installed(cache, "tiny")


def test_hub_sha256_mismatch_is_deleted(cache, hub):
    hub({"org/repo/tiny.gguf": HubFile(BLOB, reported_sha256=OTHER_SHA)})
    r = run_cli("models", "pull", "org/repo/tiny.gguf")
    one_line_refusal(r, f"sha256 {SHA[:12]}", f"expected {OTHER_SHA[:12]}", "(hub)")
    nothing_installed(cache, "tiny")


def test_given_sha256_differing_from_the_hub_refused_before_download(cache, hub):
    server = hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    r = run_cli("models", "pull", "org/repo/tiny.gguf", "--sha256", OTHER_SHA)
    one_line_refusal(r, "differs from the hub's sha256", "nothing was downloaded")
    assert not server.gets("/cdn/")
    nothing_installed(cache, "tiny")


def test_unverifiable_file_needs_sha256(cache, hub):
    server = hub({"org/repo/plain.gguf": HubFile(BLOB, lfs=False)})
    r = run_cli("models", "pull", "org/repo/plain.gguf")
    one_line_refusal(r, "reports no sha256", "--sha256")
    assert not server.gets("/org/") and not server.gets("/cdn/")  # only the HEAD
    nothing_installed(cache, "plain")
    r = run_cli("models", "pull", "org/repo/plain.gguf", "--sha256", OTHER_SHA)  # wrong: downloaded, then refused
    one_line_refusal(r, "expected", "(--sha256)")
    nothing_installed(cache, "plain")
    r = run_cli("models", "pull", "org/repo/plain.gguf", "--sha256", SHA.upper(), "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["sha256_source"] == "--sha256"
    assert presets.resolve_model("plain")[1].read_bytes() == BLOB


def test_not_a_gguf_is_refused(cache, hub):
    body = b"PK\x03\x04 a zip, not a model" * 100
    hub({"org/repo/fake.gguf": HubFile(body)})
    one_line_refusal(run_cli("models", "pull", "org/repo/fake.gguf"), "is not a GGUF file")
    nothing_installed(cache, "fake")


@pytest.mark.parametrize("args", [
    ["org/repo/smollm2-135m.gguf"],  # the name taken from the file
    ["org/repo/tiny.gguf", "--name", "smollm2-135m"],
    ["org/repo/tiny.gguf", "--name", "QWEN2.5-Coder-0.5B"],
])
def test_a_name_never_shadows_a_preset(cache, hub, args):
    server = hub({"org/repo/tiny.gguf": HubFile(BLOB), "org/repo/smollm2-135m.gguf": HubFile(BLOB)})
    one_line_refusal(run_cli("models", "pull", *args), "is a preset's", "--name")
    assert not server.file_requests()  # refused before any network
    assert presets.read_registry() == {}


@pytest.mark.parametrize("args, needle", [
    (["tiny.gguf"], "OWNER/REPO/FILE.gguf"),
    (["org/repo/model.safetensors"], "not a .gguf file"),
    (["org/repo/tiny.gguf", "--name", "a/b"], "bad model name"),
    (["org/repo/tiny.gguf", "--sha256", "abc"], "64 hex digits"),
])
def test_bad_arguments_are_refused_before_the_network(cache, hub, args, needle):
    server = hub({})
    one_line_refusal(run_cli("models", "pull", *args), needle)
    assert not server.file_requests()


def test_missing_repo_and_file_name_the_problem(cache, hub):
    hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    one_line_refusal(run_cli("models", "pull", "org/nope/tiny.gguf"), "repository org/nope not found")
    one_line_refusal(run_cli("models", "pull", "org/repo/other.gguf"), "other.gguf not found in org/repo")
    nothing_installed(cache, "other")


def test_unreachable_endpoint(cache, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    r = run_cli("models", "pull", "org/repo/tiny.gguf")
    one_line_refusal(r, f"cannot reach http://127.0.0.1:{port}", "HF_ENDPOINT")
    assert time.monotonic() - t0 < 30  # no long retry loop before saying so
    nothing_installed(cache, "tiny")


def test_interrupted_pull_leaves_nothing(cache, hub):
    hub({"org/repo/tiny.gguf": HubFile(BLOB, slow_s=0.2)})  # ~2 s of transfer
    proc = popen_interruptible([sys.executable, "-m", "edge_agent.cli", "models", "pull", "org/repo/tiny.gguf"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while not list(cache.rglob("*.incomplete")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(cache.rglob("*.incomplete")), "the download never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: nothing was installed" in err.decode() and "Traceback" not in err.decode()
    nothing_installed(cache, "tiny")
    assert not list(cache.rglob("*.incomplete"))


# In-process: the disk filling up, which a test cannot arrange for real.

def _offline_off(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, on import; this process may have imported it offline."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_disk_full_during_download(cache, hub, monkeypatch):
    from edge_agent import pull

    server = hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    _offline_off(monkeypatch)
    import huggingface_hub.file_download as fd

    def full(url, temp_file, **kwargs):
        temp_file.write(BLOB[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fd, "http_get", full)
    with pytest.raises(ModelError, match="disk full while pulling org/repo/tiny.gguf: nothing was installed"):
        pull.pull_model(pull.parse_request("org/repo/tiny.gguf", None, None, None), endpoint=server.url)
    nothing_installed(cache, "tiny")


def test_too_little_space_is_refused_before_download(cache, hub, monkeypatch):
    from edge_agent import pull

    server = hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    _offline_off(monkeypatch)
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda path: SimpleNamespace(free=1 << 20))
    with pytest.raises(ModelError, match="not enough disk space"):
        pull.pull_model(pull.parse_request("org/repo/tiny.gguf", None, None, None), endpoint=server.url)
    assert not server.gets("/cdn/")
    nothing_installed(cache, "tiny")


def test_a_pulled_file_that_changed_is_refused(cache, hub):
    hub({"org/repo/tiny.gguf": HubFile(BLOB)})
    assert run_cli("models", "pull", "org/repo/tiny.gguf").returncode == 0
    path = presets.resolve_model("tiny")[1]
    path.write_bytes(BLOB[:-1] + b"X")
    with pytest.raises(ModelError, match="changed on disk"):
        presets.resolve_model("tiny")
