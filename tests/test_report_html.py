"""``reports/report.html``: the self-contained HTML version of REPORT.md (eden_lib.reporting.html)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from eden_lib.reporting.html import markdown_to_html, write_html_report

ROOT = Path(__file__).resolve().parents[1]
IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its ``<style>`` elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


def parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def png_bytes(width: int = 3, height: int = 2, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def assert_self_contained(page: str) -> None:
    """Nothing the page loads comes from outside it: no script, no stylesheet link, every image a data URI."""
    tags = parse(page)
    names = [tag for tag, _ in tags.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in tags.tags:
        if tag in ("img", "source", "video", "audio", "embed", "object"):
            src = attrs.get("src", attrs.get("data", ""))
            assert src.startswith("data:"), (tag, src[:80])
    assert "@import" not in tags.style
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", tags.style)


SAMPLE = """\
# Sample report (profile `test`)

> **Read this first.** A quote with `code`.

## First section

Some **bold** text and a [paper](https://example.org/paper) link.

| method | auc |
|---|---:|
| scratch | 0.5 |
| alice | 0.7 |

![a figure](figures/x/a.png)

## Second: the claim (Adam's)

### A subsection

- one
- two
"""


def test_markdown_to_html_embeds_images_and_links_sections(tmp_path):
    data = png_bytes()
    (tmp_path / "figures" / "x").mkdir(parents=True)
    (tmp_path / "figures" / "x" / "a.png").write_bytes(data)
    page = markdown_to_html(SAMPLE, tmp_path, "Sample <report>")

    tags = parse(page)
    h2 = [attrs.get("id") for tag, attrs in tags.tags if tag == "h2"]
    assert h2 == ["first-section", "second-the-claim-adams"]
    assert re.search(r'<h2 id="first-section">First section</h2>', page)
    assert "<table>" in page and "<strong>bold</strong>" in page and "<blockquote>" in page
    assert "<title>Sample &lt;report&gt;</title>" in page
    toc = re.search(r'<nav class="toc">(.*?)</nav>', page, re.S).group(1)
    assert re.findall(r'href="#([^"]+)"', toc) == h2
    assert page.index("<blockquote>") < page.index('<nav class="toc">') < page.index("<h2")

    srcs = [attrs["src"] for tag, attrs in tags.tags if tag == "img"]
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == data
    assert_self_contained(page)
    assert 'href="https://example.org/paper"' in page  # a plain link is kept: it is not loaded


def test_missing_image_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"figures/x/a\.png.*no such file .*figures/x/a\.png"):
        markdown_to_html(SAMPLE, tmp_path, "t")


def test_remote_image_is_refused_and_raw_html_cannot_load_anything(tmp_path):
    with pytest.raises(ValueError, match="only local image files"):
        markdown_to_html("![remote](https://example.org/a.png)\n", tmp_path, "t")
    page = markdown_to_html('<img src="https://example.org/a.png"><script>alert(1)</script>\n', tmp_path, "t")
    assert_self_contained(page)
    assert "&lt;script&gt;" in page


def test_write_html_report_is_atomic_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "figures" / "x").mkdir(parents=True)
    (tmp_path / "figures" / "x" / "a.png").write_bytes(png_bytes())
    (tmp_path / "REPORT.md").write_text(SAMPLE)
    out = tmp_path / "report.html"
    out.write_text("stale")
    assert write_html_report(tmp_path / "REPORT.md", out) == out
    assert "<title>Sample report (profile test)</title>" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md", "figures", "report.html"]

    (tmp_path / "BROKEN.md").write_text("![gone](figures/gone.png)\n")
    with pytest.raises(FileNotFoundError):
        write_html_report(tmp_path / "BROKEN.md", out)
    assert "<title>Sample report" in out.read_text()  # the previous report is left whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BROKEN.md", "REPORT.md", "figures", "report.html"]


def test_repository_report_embeds_every_figure():
    report = ROOT / "reports" / "REPORT.md"
    if not report.exists():
        pytest.skip("reports/REPORT.md is absent (the report stage has not run)")
    text = report.read_text()
    referenced = IMAGE_RE.findall(text)
    page = markdown_to_html(text, report.parent, "report")
    srcs = [attrs["src"] for tag, attrs in parse(page).tags if tag == "img"]
    assert len(srcs) == len(referenced) > 0
    for src, path in zip(srcs, referenced):
        assert base64.b64decode(src.split(",", 1)[1]) == (report.parent / path).read_bytes(), path
    assert_self_contained(page)


CHECK_SCRIPT = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  const shown = (e) => e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().height > 0;
  document.body.setAttribute("data-check", JSON.stringify({
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0 && shown(i)).length,
    h2: [...document.querySelectorAll("h2")].filter(shown).map((h) => h.id),
    toc: [...document.querySelectorAll("nav.toc a")].map((a) => a.getAttribute("href")),
  }));
});
</script>
"""


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    sizes = {"pretrain/a.png": (40, 20), "pretrain/b.png": (30, 30), "claims/c.png": (10, 50)}
    for name, (w, h) in sizes.items():
        (tmp_path / "figures" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "figures" / name).write_bytes(png_bytes(w, h, "blue"))
    sections = ["Summary", "Pretraining", "Transfer", "Claim: 3D beats 2D (Models Genesis)", "Compute"]
    md = ["# Eden study report (profile `test`)", "", "> **Read this first.** A caveat.", ""]
    for i, section in enumerate(sections):
        md += [f"## {section}", "", "| method | value |", "|---|---:|", f"| scratch | {i} |", "",
               f"### detail {i}", "", "- a bullet", ""]
    md[md.index("## Pretraining") + 1:md.index("## Pretraining") + 1] = ["", "![a](figures/pretrain/a.png)",
                                                                           "![b](figures/pretrain/b.png)"]
    md += ["![c](figures/claims/c.png)", ""]
    page = markdown_to_html("\n".join(md), tmp_path, "Eden study report")
    assert_self_contained(page)

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    found = re.search(r'data-check="([^"]*)"', out.stdout)
    assert found, (out.returncode, out.stderr[-2000:])
    check = json.loads(html.unescape(found.group(1)))
    ids = [attrs["id"] for tag, attrs in parse(page).tags if tag == "h2"]
    assert check["images"] == check["loaded"] == len(sizes)
    assert check["h2"] == ids and len(ids) == len(sections)
    assert check["toc"] == [f"#{i}" for i in ids]
