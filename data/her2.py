"""HER2 expression level from BCI-style file names.

BCI names its pairs ``<index>_<phase>_<level>.png`` with level one of ``0``, ``1+``, ``2+``, ``3+``
(e.g. ``00012_test_2+.png``). Result files written by ``test.py`` keep that stem
(``00012_test_2+_fake_B.png``), so the same parser serves datasets and result folders.
"""
from __future__ import annotations

import re
from pathlib import PurePath
from typing import Optional

HER2_LEVELS = ("0", "1+", "2+", "3+")

_LEVEL_RE = re.compile(r"_(0|1\+|2\+|3\+)(?=$|_(?:real_A|real_B|fake_B|fake_A|rec_A|rec_B)$)")


def parse_her2(name: str) -> Optional[str]:
    """Return the HER2 level (``'0'``, ``'1+'``, ``'2+'``, ``'3+'``) encoded in a BCI file name, or ``None``.

    The level is the last underscore-separated token of the stem, optionally followed by a result suffix
    such as ``_fake_B``. ``'00012_test_2+.png'`` -> ``'2+'``; ``'00012_test_2+_fake_B.png'`` -> ``'2+'``;
    ``'slide_7.png'`` -> ``None``.
    """
    stem = PurePath(name).name
    if "." in stem:
        stem = stem[: stem.rfind(".")]
    m = _LEVEL_RE.search(stem)
    return m.group(1) if m else None
