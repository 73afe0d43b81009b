"""The self-contained HTML review form (built with ``dominate``).

One page with a name field, every image under its anonymous id with four radio buttons (0 / 1+ / 2+ / 3+), a
progress counter, buttons that save the answers as JSON or CSV through a client-side download, and a loader for a saved
JSON file. CSS and JavaScript are inline (:mod:`review.assets`); images are either ``data:`` URIs in the page or files
beside it (``images/<id>.png``), so the form works offline from a folder or a USB stick. The page holds only ids:
nothing about which image is real, which images belong together, or the source names.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import dominate
from dominate import tags as t
from dominate.util import raw

from review import ANSWERS_CSV_COLUMNS, ANSWERS_FORMAT, FORMAT_VERSION, LEVELS
from review.assets import CSS, JS

INSTRUCTIONS = (
    "Each image below is an IHC image of breast tissue stained for HER2. Some are real stains, some are generated "
    "from H&E by a network; the order is random. Score the HER2 level you see in each image (0, 1+, 2+ or 3+, as in "
    "routine HER2 IHC scoring), enter your name, and save your answers with one of the Save buttons; send the saved "
    "file back. Click an image to see it at full resolution. Progress is kept in this browser if it allows; you can "
    "also save a partial file and load it again later."
)


def _json_for_script(obj) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` sequence can close it early)."""
    return json.dumps(obj).replace("</", "<\\/")


def render_form(form_id: str, ids: Sequence[str], sources: Mapping[str, str], title: str = "HER2 blinded review"
                ) -> str:
    """Return the form's HTML.

    Args:
        form_id: the key's ``form_id`` (also written into every answer file).
        ids: anonymous image ids in display order.
        sources: ``id -> img src`` (a relative path such as ``images/img01.png`` or a ``data:image/png`` URI).
        title: page title (HTML-escaped).

    Raises:
        ValueError: an id has no source.
    """
    missing = [i for i in ids if i not in sources]
    if missing:
        raise ValueError(f"no image source for id(s) {missing[:5]}")
    doc = dominate.document(title=title)
    with doc.head:
        t.meta(charset="utf-8")
        t.meta(name="viewport", content="width=device-width, initial-scale=1")
        t.style(raw(CSS))
    config = {
        "form_id": form_id, "ids": list(ids), "levels": list(LEVELS), "answers_format": ANSWERS_FORMAT,
        "version": FORMAT_VERSION, "csv_columns": list(ANSWERS_CSV_COLUMNS),
    }
    with doc.body:
        with t.header():
            t.h1(title)
            with t.div(cls="bar"):
                t.label("Reviewer name: ", fr="reviewer")
                t.input_(type="text", id="reviewer", name="reviewer", autocomplete="name")
                t.span("", id="progress")
                t.button("Save answers (JSON)", type="button", id="save-json")
                t.button("Save answers (CSV)", type="button", id="save-csv")
                t.label("Load saved answers: ", fr="load")
                t.input_(type="file", id="load", accept=".json,application/json")
            t.div(f"Form {form_id}, {len(ids)} images", cls="formid")
        t.p(INSTRUCTIONS, cls="instructions")
        with t.main():
            for n, image_id in enumerate(ids, 1):
                with t.figure(id=f"fig-{image_id}", cls="unscored"):
                    t.figcaption(f"Image {n} ({image_id})")
                    t.img(src=sources[image_id], alt=f"image {image_id}", loading="lazy")
                    with t.fieldset():
                        t.legend(f"HER2 level of image {n}", style="position:absolute;left:-9999px")
                        for level in LEVELS:
                            with t.label():
                                t.input_(type="radio", name=image_id, value=level, id=f"{image_id}-{level}")
                                t.span(f" {level}")
        t.script(raw(_json_for_script(config)), type="application/json", id="review-config")
        t.script(raw(JS))
    return doc.render()
