"""``reports/REPORT.md`` -> a self-contained ``reports/report.html``: figures embedded as base64 data URIs, CSS
inline, no script and nothing loaded from anywhere else, so the file opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from markdown_it import MarkdownIt
from markdown_it.token import Token

IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

CSS = """\
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eff1f3; padding: .1em .3em;
       border-radius: 4px; }
blockquote { margin: 1em 0; padding: .5em 1em; border-left: 4px solid #d29922; background: #fff8e6; }
table { display: block; overflow-x: auto; max-width: 100%; border-collapse: collapse; margin: 1em 0;
        font-size: .85em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; white-space: nowrap; }
th { background: #eaeef2; }
tbody tr:nth-child(even) { background: #f6f8fa; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .5em 1.5em; }
nav.toc ol { margin: .3em 0; columns: 2; }
a { color: #0969da; }
"""


def _slug(text: str, taken: set[str]) -> str:
    """A lower-case, hyphenated id for a heading's text, suffixed ``-2``, ``-3``... when already ``taken``."""
    base = re.sub(r"[^\w]+", "-", text.lower().replace("'", "")).strip("-") or "section"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def _data_uri(src: str, base_dir: Path) -> str:
    """The image ``src`` (a path relative to ``base_dir``) as a base64 ``data:`` URI; a remote ``src`` is an error."""
    if urlparse(src).scheme:
        raise ValueError(f"image {src!r}: only local image files can be embedded in the self-contained report")
    file = base_dir / unquote(src)
    mime = IMAGE_TYPES.get(file.suffix.lower())
    if mime is None:
        raise ValueError(f"image {src!r}: unsupported type {file.suffix!r} (supported: {', '.join(IMAGE_TYPES)})")
    if not file.is_file():
        raise FileNotFoundError(f"image {src!r} referenced in the markdown: no such file {file.resolve()}")
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}"


def _prepare(tokens: list[Token], base_dir: Path) -> list[tuple[str, str]]:
    """Embed every image and give every ``##`` heading an id, in place; return the (id, title) of each ``##``."""
    sections: list[tuple[str, str]] = []
    taken: set[str] = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            title = "".join(child.content for child in tokens[i + 1].children or [])
            slug = _slug(title, taken)
            token.attrSet("id", slug)
            sections.append((slug, title))
        for child in token.children or []:
            if child.type == "image":
                child.attrSet("src", _data_uri(str(child.attrGet("src")), base_dir))
    return sections


def markdown_to_html(text: str, base_dir: Path, title: str) -> str:
    """Render markdown ``text`` as one self-contained HTML page titled ``title``.

    Relative image paths are read from ``base_dir`` and embedded; raw HTML in the markdown is escaped (so it cannot
    load anything); a table of contents of the ``##`` sections is placed before the first of them.
    """
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    tokens = md.parse(text)
    sections = _prepare(tokens, Path(base_dir))
    first = next((i for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"), len(tokens))
    toc = "".join(f'<li><a href="#{slug}">{html.escape(name)}</a></li>' for slug, name in sections)
    nav = f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>\n' if sections else ""
    body = md.renderer.render(tokens[:first], md.options, {}) + nav + md.renderer.render(tokens[first:], md.options, {})
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_html_report(markdown_path: Path, html_path: Path) -> Path:
    """Convert ``markdown_path`` (images relative to its folder) to ``html_path``, atomically; return ``html_path``.

    The title is the markdown's first ``# `` heading (without backticks), else the file name.
    """
    markdown_path, html_path = Path(markdown_path), Path(html_path)
    text = markdown_path.read_text(encoding="utf-8")
    title = next((line[2:].replace("`", "").strip() for line in text.splitlines() if line.startswith("# ")),
                 markdown_path.stem)
    page = markdown_to_html(text, markdown_path.parent, title)
    fd, tmp = tempfile.mkstemp(dir=html_path.parent, prefix=f".{html_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, html_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return html_path
