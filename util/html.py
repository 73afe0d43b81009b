"""A small HTML page writer for training visuals and test results (built on ``dominate``).

The page layout follows the pix2pix/CycleGAN result pages: a title, then headers and rows of captioned images, each
image linking to its full-size file. Paths given to :class:`HTMLPage` are relative to the page's folder.

Safety and portability:
- Every text (captions, headers, table cells) and every attribute goes through dominate's escaping, so a file named
  ``<script>.png`` is shown literally and cannot inject markup. ``dominate.util.raw`` is never used.
- Links and image sources are percent-encoded with :func:`urllib.parse.quote` (RFC 3986; '/' kept as separator,
  non-ASCII as UTF-8 bytes), so names with ``#``, ``?``, ``%``, spaces, ``+`` or unicode open in a browser from
  ``file://`` and over HTTP. Backslashes of Windows paths become '/'.
- :meth:`HTMLPage.save` writes atomically (``util/fileio.py``): a reader sees the old page or the new one, never half.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Iterable, Optional, Sequence, Union
from urllib.parse import quote

import dominate
from dominate import tags

from util.fileio import atomic_write_text

PathLike = Union[str, os.PathLike]

#: What each pix2pix visual shows in this project (H&E -> HER2 IHC). File names keep the pix2pix names
#: (``<stem>_real_A.png`` ...); pages show these labels. CycleGAN's extra visuals keep descriptive names.
VISUAL_LABELS = {
    "real_A": "H&E",
    "fake_B": "virtual IHC",
    "real_B": "real IHC",
    "fake_A": "virtual H&E",
    "rec_A": "H&E reconstructed",
    "rec_B": "IHC reconstructed",
    "idt_A": "identity (IHC in, G_A)",
    "idt_B": "identity (H&E in, G_B)",
    "real": "H&E",
    "fake": "virtual IHC",
}


def visual_label(name: str) -> str:
    """Label for a visual name: ``'fake_B'`` -> ``'virtual IHC'``; unknown names are returned unchanged."""
    return VISUAL_LABELS.get(name, name)


def url_for(path: PathLike) -> str:
    """Percent-encode a relative file path for an ``href``/``src`` attribute.

    ``'00012_test_2+_fake_B.png'`` -> ``'00012_test_2%2B_fake_B.png'``; ``'a b#1.png'`` -> ``'a%20b%231.png'``;
    ``'images/x.png'`` keeps its '/'. Windows separators (``'images\\x.png'``) become '/'.
    """
    if isinstance(path, PurePath):
        text = path.as_posix()
    else:
        text = os.fspath(path).replace("\\", "/")
    return quote(text, safe="/")


class HTMLPage:
    """An HTML page in ``web_dir`` with images stored under ``web_dir/images``.

    Args:
        web_dir: folder of the page (created if missing).
        title: page title, also shown as the first heading (escaped).
        refresh: if > 0, the page reloads itself every ``refresh`` seconds (``<meta http-equiv="refresh">``);
            useful for training pages that are rewritten while a browser shows them.

    Raises:
        ValueError: ``refresh`` is negative.
    """

    def __init__(self, web_dir: PathLike, title: str, refresh: int = 0) -> None:
        if refresh < 0:
            raise ValueError(f"refresh must be >= 0 seconds, got {refresh}")
        self.web_dir = Path(web_dir)
        self.title = str(title)
        self.web_dir.mkdir(parents=True, exist_ok=True)
        self.doc = dominate.document(title=self.title)
        with self.doc.head:
            tags.meta(charset="utf-8")
            if refresh > 0:
                tags.meta(http_equiv="refresh", content=str(int(refresh)))
            tags.style(
                "table{border-collapse:collapse;margin-bottom:12px}"
                "td,th{padding:4px;vertical-align:top;word-wrap:break-word;text-align:center}"
                "th,td.cell{border:1px solid #ccc}"
            )
        with self.doc:
            tags.h1(self.title)

    @property
    def images_dir(self) -> Path:
        """``<web_dir>/images`` (created on first access)."""
        d = self.web_dir / "images"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add_header(self, text: str, level: int = 3) -> None:
        """Add a heading ``<h{level}>`` with ``text`` (escaped). ``level`` is 1..6 (ValueError otherwise)."""
        if level not in range(1, 7):
            raise ValueError(f"header level must be 1..6, got {level}")
        with self.doc:
            getattr(tags, f"h{level}")(str(text))

    def add_images(
        self,
        images: Sequence[PathLike],
        texts: Sequence[str],
        links: Optional[Sequence[PathLike]] = None,
        width: int = 256,
    ) -> None:
        """Add one row of captioned images.

        Args:
            images: image paths relative to the page (e.g. ``images/epoch001_real_A.png``).
            texts: one caption per image (escaped; also the ``alt`` text).
            links: one link target per image (relative to the page); defaults to the image itself.
            width: display width in CSS pixels (> 0); the height follows the aspect ratio.

        Raises:
            ValueError: the three lists differ in length, or ``width`` <= 0.
        """
        links = list(images) if links is None else list(links)
        if not (len(images) == len(texts) == len(links)):
            raise ValueError(
                f"add_images needs as many texts and links as images: {len(images)} images, "
                f"{len(texts)} texts, {len(links)} links"
            )
        if width <= 0:
            raise ValueError(f"width must be > 0 px, got {width}")
        with self.doc:
            with tags.table(cls="images"):
                with tags.tr():
                    for im, txt, link in zip(images, texts, links):
                        with tags.td(style=f"width:{int(width)}px"):
                            with tags.a(href=url_for(link)):
                                tags.img(style=f"width:{int(width)}px", src=url_for(im), alt=str(txt))
                            tags.br()
                            tags.p(str(txt))

    def add_table(self, header: Sequence[str], rows: Iterable[Sequence[object]], caption: Optional[str] = None) -> None:
        """Add a text table: ``header`` cells (``<th>``), then one ``<tr>`` per row; cells are shown with ``str()``.

        Floats are shown with 4 significant digits. Raises ValueError if a row's length differs from the header's.
        """
        header = [str(h) for h in header]
        rows = [list(r) for r in rows]
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise ValueError(f"table row {i} has {len(row)} cells, the header has {len(header)}")
        with self.doc:
            with tags.table(cls="data"):
                if caption is not None:
                    tags.caption(str(caption))
                with tags.tr():
                    for h in header:
                        tags.th(h)
                for row in rows:
                    with tags.tr():
                        for cell in row:
                            tags.td(f"{cell:.4g}" if isinstance(cell, float) else str(cell), cls="cell")

    def render(self) -> str:
        """The page as an HTML string."""
        return self.doc.render()

    def save(self, filename: str = "index.html") -> Path:
        """Write the page to ``<web_dir>/<filename>`` atomically (UTF-8) and return its path."""
        return atomic_write_text(self.web_dir / filename, self.render())
