"""The README follows a newcomer's path and stays short; its links and the docs site's resolve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(text: str) -> list[str]:
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]


def test_readme_is_short_and_in_the_newcomers_order():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 300
    order = [
        "Quick start",
        "Predict",
        "Your own data",
        "Export and serve",
        "Scale out",
        "The CRF layer",
    ]
    headings = _headings(text)
    positions = [headings.index(name) for name in order]
    assert positions == sorted(positions), headings


def test_every_relative_link_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in _headings(text)}
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            if not path:
                if anchor not in anchors:
                    broken.append(f"{page.name}: #{anchor}")
            elif not (page.parent / path).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken


def test_the_docs_site_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = {next(iter(entry.values())) for entry in config["nav"]}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert listed == pages


def test_no_merge_conflict_markers_in_tracked_files():
    import subprocess

    found = subprocess.run(
        ["git", "grep", "-n", "-E", "^(<<<<<<< |>>>>>>> |=======$)"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    ).stdout
    assert found == "", found
