"""The default ``--model``: the 0.5B once its part packages are installed, else the embedded SmolLM2 with a note.

"Installed" is faked, never real: fake part packages on PYTHONPATH (found as real ones are, by
find_spec) or a patched locator, and a private EDGE_AGENT_CACHE. No test here loads a model."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge_agent import presets
from edge_agent.cli.options import model_option
from tests.conftest import run_cli

Q05 = presets.PRESETS[presets.BEST_PRESET]


def fake_parts(root: Path, missing: int | None = None) -> Path:
    """The 0.5B's part packages as empty packages with a data/*.bin chunk each (one left out if ``missing``)."""
    for i, pkg in enumerate(Q05.packages):
        if i == missing:
            continue
        (root / pkg / "data").mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("raise ImportError('a part package must never be imported')\n")
        (root / pkg / "data" / "00.bin").write_bytes(b"GGUF" if i == 0 else b"x")
    return root


@pytest.fixture
def no_parts(tmp_path, monkeypatch):
    """Nothing of the 0.5B installed, whatever this machine has: no part packages, an empty models dir."""
    monkeypatch.setenv("EDGE_AGENT_CACHE", str(tmp_path / "cache"))
    real = presets.package_dir
    monkeypatch.setattr(presets, "package_dir", lambda name: None if name in Q05.packages else real(name))
    monkeypatch.delenv("EDGE_AGENT_MODEL", raising=False)


def test_default_is_the_best_preset_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_CACHE", str(tmp_path / "cache"))

    def installed_in(site: Path) -> None:
        monkeypatch.setattr(presets, "package_dir", lambda name: site / name if (site / name).is_dir() else None)

    installed_in(tmp_path / "empty")
    assert presets.default_model() == "smollm2-135m"
    installed_in(fake_parts(tmp_path / "five", missing=3))
    assert presets.default_model() == "smollm2-135m"  # five of six parts are not the model
    installed_in(fake_parts(tmp_path / "six"))
    assert presets.default_model() == "qwen2.5-coder-0.5b"


def test_a_joined_and_verified_05b_counts_without_its_packages(no_parts, tmp_path):
    assert presets.default_model() == "smollm2-135m"
    joined = presets.cache_dir() / Q05.filename
    joined.parent.mkdir(parents=True)
    joined.write_bytes(b"GGUF")
    assert presets.default_model() == "smollm2-135m"  # no verified marker: not a usable 0.5B
    presets.mark_verified(joined, Q05.sha256)
    assert presets.default_model() == "qwen2.5-coder-0.5b"


def test_note_names_the_extra_only_for_the_smoke_test_model():
    note = presets.default_note("smollm2-135m")
    assert "pip install 'edge-agent[models]'" in note and "qwen2.5-coder-0.5b" in note and "\n" not in note
    assert presets.default_note("qwen2.5-coder-0.5b") is None


def _probe():
    @click.command()
    @model_option("Model.")
    @click.option("--json", "as_json", is_flag=True)
    def probe(model, as_json):
        click.echo(json.dumps({"model": model}) if as_json else model)

    return probe


def test_cli_default_falls_back_with_one_note_on_stderr(no_parts):
    result = CliRunner().invoke(_probe(), ["--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"model": "smollm2-135m"}  # --json stdout stays clean
    assert result.stderr.count("note:") == 1 and "pip install 'edge-agent[models]'" in result.stderr


def test_an_explicit_model_or_env_var_wins_silently(no_parts, monkeypatch):
    result = CliRunner().invoke(_probe(), ["--model", "script:x.json"])
    assert result.stdout.strip() == "script:x.json" and result.stderr == ""
    monkeypatch.setenv("EDGE_AGENT_MODEL", "smollm2-135m")
    result = CliRunner().invoke(_probe(), [])
    assert result.stdout.strip() == "smollm2-135m" and result.stderr == ""


def test_help_does_not_look_for_models(no_parts, monkeypatch):
    def boom():
        raise AssertionError("the default was computed for --help")

    monkeypatch.setattr(presets, "default_model", boom)
    monkeypatch.setattr("edge_agent.cli.options.default_model", boom)
    result = CliRunner().invoke(_probe(), ["--help"])
    assert result.exit_code == 0 and "best preset installed" in result.stdout


def test_real_command_notes_once_and_models_marks_the_default(no_parts):
    from edge_agent.cli import cli

    result = CliRunner().invoke(cli, ["solve", "", "--json"])  # refused after the options are parsed
    assert result.exit_code == 2
    assert result.stderr.count("note: no --model given, using smollm2-135m") == 1
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    assert [r["name"] for r in json.loads(result.stdout) if r["default"]] == ["smollm2-135m"]
    result = CliRunner().invoke(cli, ["models"])
    assert "default (no --model, no EDGE_AGENT_MODEL): smollm2-135m" in result.stdout


def test_installed_parts_make_the_05b_the_default_end_to_end(tmp_path, monkeypatch):
    """Real lookup in a fresh process: fake part packages on PYTHONPATH shadow any real ones."""
    site = fake_parts(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("EDGE_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGE_AGENT_MODEL")
    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert [row["name"] for row in json.loads(r.stdout) if row["default"]] == ["qwen2.5-coder-0.5b"]
    assert b"note:" not in r.stderr
    # solve without --model goes for the 0.5B: it joins the (fake) parts and refuses their sha256, loading nothing
    r = run_cli("solve", "What is 2 + 2?", "--json", "--offline")
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and b"note:" not in r.stderr
    assert f"joined model {Q05.filename} has sha256" in err
    assert not (tmp_path / "cache" / Q05.filename).exists()
