"""util/html.py: escaping, URL encoding that a browser resolves to the right file, atomic save."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

from util.html import HTMLPage, url_for

NASTY = [
    "<script>alert(1).png",
    "<img src=x onerror=alert(1)>.png",
    "a&b.png",
    'q"uote\'s.png',
    "00012_test_2+_fake_B.png",
    "hash#1.png",
    "sp ace.png",
    "pct%41.png",
    "what?x=1.png",
    "ünï ☃ 染色.png",
]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.starttags: list[str] = []
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.texts: list[str] = []
        self.metas: list[dict] = []

    def handle_starttag(self, tag, attrs):
        self.starttags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "meta":
            self.metas.append(a)

    def handle_data(self, data):
        if data.strip():
            self.texts.append(data.strip())


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def _browser_resolve(page: Path, ref: str) -> Path:
    """What a browser opens for ``ref`` on the page loaded from ``file://``: join, drop query/fragment, decode."""
    url = urljoin(page.resolve().as_uri(), ref)
    parts = urlsplit(url)
    assert parts.scheme == "file" and parts.query == "" and parts.fragment == "", url
    return Path(unquote(parts.path, encoding="utf-8"))


def _tiny_png(path: Path, value: int) -> None:
    Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(path)


def test_nasty_names_escaped_and_resolve(tmp_path):
    page = HTMLPage(tmp_path / "web", title='Run <b>"x"</b> & co')
    files = []
    for i, name in enumerate(NASTY):
        p = page.images_dir / name
        _tiny_png(p, 10 * i)
        files.append(p)
    page.add_header("<i>epoch</i> & 1")
    rel = [f"images/{n}" for n in NASTY]
    page.add_images(rel, NASTY, rel, width=128)
    out = page.save()

    assert out == tmp_path / "web" / "index.html"
    c = _parse(out)
    # no markup injected from names: only the page's own tags
    assert set(c.starttags) <= {"html", "head", "title", "meta", "style", "body", "h1", "h3", "table", "tr", "td",
                                "a", "img", "br", "p"}
    assert "script" not in c.starttags and "b" not in c.starttags
    assert c.starttags.count("img") == len(NASTY) and "i" not in c.starttags
    # text shown literally
    for name in NASTY:
        assert name in c.texts
    assert 'Run <b>"x"</b> & co' in c.texts
    assert "<i>epoch</i> & 1" in c.texts
    # image sources and links resolve to the exact files
    assert [im["alt"] for im in c.imgs] == NASTY
    assert [_browser_resolve(out, im["src"]) for im in c.imgs] == [f.resolve() for f in files]
    assert [_browser_resolve(out, h) for h in c.links] == [f.resolve() for f in files]
    assert all(im["style"] == "width:128px" for im in c.imgs)


def test_url_for_encoding():
    assert url_for("images/00012_test_2+_fake_B.png") == "images/00012_test_2%2B_fake_B.png"
    assert url_for("a b#c?d%e.png") == "a%20b%23c%3Fd%25e.png"
    assert url_for("images\\x.png") == "images/x.png"
    assert url_for(Path("images") / "é.png") == "images/%C3%A9.png"


def test_links_default_to_images_and_length_checks(tmp_path):
    page = HTMLPage(tmp_path, "t")
    page.add_images(["images/a.png"], ["a"])
    c = _Collector()
    c.feed(page.render())
    assert c.links == ["images/a.png"] and c.imgs[0]["src"] == "images/a.png"
    with pytest.raises(ValueError, match="texts"):
        page.add_images(["a.png", "b.png"], ["a"])
    with pytest.raises(ValueError, match="width"):
        page.add_images(["a.png"], ["a"], width=0)
    with pytest.raises(ValueError, match="refresh"):
        HTMLPage(tmp_path, "t", refresh=-1)


def test_refresh_meta(tmp_path):
    with_refresh = _Collector()
    with_refresh.feed(HTMLPage(tmp_path / "a", "t", refresh=7).render())
    assert {"http-equiv": "refresh", "content": "7"} in with_refresh.metas
    without = _Collector()
    without.feed(HTMLPage(tmp_path / "b", "t").render())
    assert all(m.get("http-equiv") != "refresh" for m in without.metas)


def test_images_dir_created(tmp_path):
    page = HTMLPage(tmp_path / "w", "t")
    d = page.images_dir
    assert d == tmp_path / "w" / "images" and d.is_dir()


def test_table_and_bad_row_leaves_page_unchanged(tmp_path):
    page = HTMLPage(tmp_path, "t")
    page.add_table(["level", "PSNR (dB)"], [["2+", 21.16321], ["<3+>", 7]], caption="a & b")
    c = _Collector()
    c.feed(page.render())
    for t in ["level", "PSNR (dB)", "2+", "21.16", "<3+>", "7", "a & b"]:
        assert t in c.texts
    before = page.render()
    with pytest.raises(ValueError, match="row 1"):
        page.add_table(["a", "b"], [[1, 2], [3]])
    assert page.render() == before


def test_save_overwrites_atomically(tmp_path):
    page = HTMLPage(tmp_path, "first")
    page.save()
    page2 = HTMLPage(tmp_path, "second ✓")
    page2.add_header("h")
    page2.save()
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "second ✓" in text and "first" not in text
    # only the page itself: no temporary files left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    page2.save("other.html")
    assert (tmp_path / "other.html").read_text(encoding="utf-8") == text
