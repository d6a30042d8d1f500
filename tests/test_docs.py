"""The docs a newcomer reads: a short README with the two Quick start commands (CI runs the second,
and nothing else), every page in the site's nav, a site that builds with every link resolved, and
sentences short enough to read aloud."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_WORDS = 40


def _prose(text: str) -> str:
    """The text without code blocks, inline code, links' targets and tables' separator rows."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "code", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return "\n".join(line for line in text.splitlines() if not re.fullmatch(r"\s*\|?[\s|:-]+\|?\s*", line))


def _sentences(text: str) -> list[str]:
    pieces = []
    for block in re.split(r"\n\s*\n|\n\s*[-*|#]|\|", _prose(text)):
        pieces += re.split(r"(?<=[.!?])\s+", " ".join(block.split()))
    return [p for p in pieces if p]


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()


def test_the_readme_is_short_and_its_quick_start_is_the_two_commands():
    assert (ROOT / "README.md").read_text().count("\n") <= 150
    assert _quick_start() == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/search run --study lr-sweep",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
    ]


def test_ci_runs_the_readmes_test_command_and_nothing_else():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', _quick_start()[1]]


def test_the_site_builds_with_every_link_resolved(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]


def test_every_page_is_in_the_sites_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def listed(nav) -> list[str]:
        found = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += listed(value) if isinstance(value, list) else [value]
        return found

    assert sorted(listed(config["nav"])) == sorted(page.name for page in PAGES) and PAGES


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_no_sentence_is_over_forty_words(page):
    long = [s for s in _sentences(page.read_text()) if len(s.split()) > MAX_WORDS]
    assert not long, f"{page.name}: {len(long)} sentence(s) over {MAX_WORDS} words, the first: {long[0]}"
