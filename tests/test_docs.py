"""The README stays a front page: at most 200 lines, and every relative link in it reaches a file of the repository.

The documentation site itself (docs/, mkdocs.yml) is checked by `mkdocs build --strict` in .ci/run; this test is
the fast guard for the one page mkdocs does not build.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200

# [text](target) and ![alt](target), with an optional "title"; reference-style definitions: [id]: target
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, protocol-relative


def _without_code(text: str) -> str:
    """Drop fenced code blocks and inline code: a `[x](y)` inside code is not a link."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text: str) -> list[str]:
    body = _without_code(text)
    targets = INLINE.findall(body) + REFERENCE.findall(body)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def test_readme_is_a_front_page_of_at_most_200_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (> {MAX_LINES}): move the detail into docs/ and link it"


def test_every_relative_link_in_the_readme_points_to_an_existing_file():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "README.md has no relative links: the map of the docs is gone, or the link parser is broken"
    missing = []
    for link in links:
        path = unquote(link.split("#", 1)[0].split("?", 1)[0])
        target = (README.parent / path).resolve()
        if not path or not target.is_file() or ROOT not in target.parents:
            missing.append(link)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_link_checker_sees_links_and_ignores_code_and_urls():
    """The parser behind the two tests above: a broken link must be found, code and URLs must not count."""
    text = ("[a](docs/x.md) ![b](img/y.png \"t\") [c](https://example.org) [d](#anchor) `[e](code.md)`\n"
            "```\n[f](fenced.md)\n```\n[g]: ref/z.md\n[h](docs/x.md#part)\n")
    assert relative_links(text) == ["docs/x.md", "img/y.png", "docs/x.md#part", "ref/z.md"]
