"""The docs say what the code does: links resolve, --set examples parse, the licence is there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_no_example_passes_two_pairs_after_one_set():
    """The CLI takes one KEY=VALUE per --set; an example with two after one is refused."""
    two = re.compile(r"--set\s+[\w.]+=\S+\s+[\w.]+=")
    files = PAGES + sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "prune2deploy").rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)}: {m.group(0)}" for f in files for m in two.finditer(f.read_text())]
    assert not bad, bad


def test_the_licence_is_the_one_pyproject_names():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert re.search(r'license\s*=\s*\{?\s*(text\s*=\s*)?"Apache-2.0"', (ROOT / "pyproject.toml").read_text())
    assert "ZipLM" in (ROOT / "CITATION.cff").read_text()
