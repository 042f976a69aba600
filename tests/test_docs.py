"""The docs hold together: every relative link in README.md and docs/*.md resolves, and the command table
in docs/commands.md lists exactly the commands `edge-agent --help` lists (and each group's subcommands).

No model is loaded: `--help` is instant (commands load lazily)."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DOC = ROOT / "docs" / "commands.md"
TABLE_MARKER = "<!-- command-table -->"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- links ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def strip_code(text: str) -> str:
    """Markdown without fenced blocks and code spans: a path in code is not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target (inline, image or reference-style) outside code."""
    prose = strip_code(text)
    return _INLINE_LINK.findall(prose) + _REF_LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links in PATH whose file (or, for a Markdown file, whose heading) does not exist."""
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in links(text):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto: not ours to check offline
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target} (outside the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    return bad


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == [], f"broken links in {path.relative_to(ROOT)}"


def test_the_docs_are_linked_from_the_readme():
    readme = links((ROOT / "README.md").read_text(encoding="utf-8"))
    unlinked = [p.name for p in doc_files()[1:] if f"docs/{p.name}" not in readme]
    assert unlinked == [], "docs files the README's map does not link"


def test_link_checker_sees_links_and_catches_a_broken_one(tmp_path, monkeypatch):
    text = "See [a](a.md#two), ![pic](pic.png), [web](https://x.org), `[not](code.md)`.\n\n# One\n## Two\n"
    assert links(text) == ["a.md#two", "pic.png", "https://x.org"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# One\n## Two\n")
    page = docs / "page.md"
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page.write_text("[ok](a.md#two) [gone](b.md) [no heading](a.md#three) [out](../../x.md)\n")
    assert broken_links(page) == ["b.md (no such file)", "a.md#three (no heading #three in docs/a.md)",
                                  "../../x.md (outside the repository)"]
    assert slug("Past one machine: `--ray`") == "past-one-machine---ray"
    assert slug("Guarantees (each is a test in `tests/`)") == "guarantees-each-is-a-test-in-tests"


# --- the command table -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def help_commands(*args: str) -> tuple[str, ...]:
    """The names under "Commands:" in `edge-agent ARGS --help`, run as a subprocess."""
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args, "--help"], capture_output=True,
                         text=True, timeout=60, check=True, cwd=ROOT).stdout
    if "\nCommands:\n" not in out:
        return []
    names = []
    for line in out.split("\nCommands:\n", 1)[1].splitlines():
        if not line.startswith("  "):
            break
        if line[2:3] != " ":  # a wrapped description is indented further
            names.append(line.split()[0])
    return tuple(names)


def table_commands(text: str) -> set[tuple[str, ...]]:
    """(command,) or (group, subcommand) for each `edge-agent ...` in the first cell of the table after the marker."""
    assert TABLE_MARKER in text, f"no {TABLE_MARKER} before the command table"
    rows = []
    for line in text.split(TABLE_MARKER, 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    found = set()
    for row in rows[2:]:  # header and separator
        first_cell = row.strip("|").split("|")[0]
        for words in re.findall(r"`edge-agent((?: [a-z][a-z0-9-]*)*)", first_cell):
            if words.split():
                found.add(tuple(words.split()[:2]))
    return found


def documented_vs_cli(text: str) -> tuple[list[str], list[str]]:
    """(listed by --help but not in the table, in the table but not listed by --help)."""
    documented = table_commands(text)
    top = {words[0] for words in documented}
    missing, extra = [], []
    cli = help_commands()
    assert len(cli) >= 10, f"could not read the commands from edge-agent --help: {cli}"
    missing += [c for c in cli if c not in top]
    extra += sorted(c for c in top if c not in cli)
    for group in cli:
        subs = help_commands(group)
        listed = {w[1] for w in documented if w[0] == group and len(w) == 2}
        if subs:
            missing += [f"{group} {s}" for s in subs if s not in listed]
            extra += sorted(f"{group} {s}" for s in listed if s not in subs)
    return missing, extra


def test_command_table_lists_exactly_the_cli_commands():
    missing, extra = documented_vs_cli(COMMANDS_DOC.read_text(encoding="utf-8"))
    assert missing == [], "commands `edge-agent --help` lists that docs/commands.md's table does not"
    assert extra == [], "commands in docs/commands.md's table that `edge-agent --help` does not list"


def test_command_check_fails_when_a_row_is_dropped():
    text = COMMANDS_DOC.read_text(encoding="utf-8")
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| `edge-agent cost`"))
    assert without != text
    assert documented_vs_cli(without)[0] == ["cost"]
    without_pull = "\n".join(line for line in text.splitlines() if not line.startswith("| `edge-agent models pull`"))
    assert documented_vs_cli(without_pull)[0] == ["models pull"]
