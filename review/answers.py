"""Reading and validating reviewers' answer files (the JSON or CSV the form saves; formats in :mod:`review.assets`).

An answer file is accepted only when it belongs to the key's form (same ``form_id``), scores every image of the
form, names no image outside it, and uses only the levels ``0``, ``1+``, ``2+``, ``3+`` (surrounding spaces are
ignored, nothing else is guessed: ``"1"`` or ``"2 +"`` are refused).
"""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Union

from review import ANSWERS_CSV_COLUMNS, ANSWERS_FORMAT, LEVELS, parse_versioned_json
from util.errors import DataError

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class AnswerFileError(DataError):
    """An answer file is malformed, incomplete, or does not belong to the key's form; the message names the file."""


@dataclass(frozen=True)
class Answers:
    """One reviewer's validated answers: ``levels`` maps every image id of the form to ``'0'``..``'3+'``."""

    reviewer: str
    path: Path
    form_id: str
    levels: Dict[str, str]


def _read_json(path: Path, text: str) -> tuple[str, str, Dict[str, str]]:
    obj = parse_versioned_json(path, text, ANSWERS_FORMAT, "answer file", AnswerFileError)
    answers = obj.get("answers")
    if not isinstance(answers, dict):
        raise AnswerFileError(f"answer file '{path}': 'answers' must be an object mapping image id to level")
    form_id, reviewer = obj.get("form_id"), obj.get("reviewer", "")
    if not isinstance(form_id, str) or not isinstance(reviewer, str):
        raise AnswerFileError(f"answer file '{path}': 'form_id' and 'reviewer' must be strings")
    return form_id, reviewer, answers


def _read_csv(path: Path, text: str) -> tuple[str, str, Dict[str, str]]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as e:
        raise AnswerFileError(f"answer file '{path}' is not valid CSV: {e}") from e
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or tuple(c.strip() for c in rows[0]) != ANSWERS_CSV_COLUMNS:
        raise AnswerFileError(f"answer file '{path}': the first CSV row must be {','.join(ANSWERS_CSV_COLUMNS)}")
    form_ids, reviewers, answers = set(), set(), {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != len(ANSWERS_CSV_COLUMNS):
            raise AnswerFileError(f"answer file '{path}' row {n}: expected {len(ANSWERS_CSV_COLUMNS)} fields, "
                                  f"got {len(r)}")
        form_id, reviewer, image_id, level = r
        form_ids.add(form_id.strip())
        reviewers.add(reviewer.strip())
        if image_id.strip() in answers:
            raise AnswerFileError(f"answer file '{path}' row {n}: image '{image_id.strip()}' is scored twice")
        answers[image_id.strip()] = level
    if len(form_ids) > 1 or len(reviewers) > 1:
        raise AnswerFileError(f"answer file '{path}' mixes forms {sorted(form_ids)} or reviewers {sorted(reviewers)}")
    return (form_ids.pop() if form_ids else ""), (reviewers.pop() if reviewers else ""), answers


def read_answers(path: PathLike, key: Mapping) -> Answers:
    """Read one answer file (JSON or CSV, chosen by the suffix, else by the first character) against ``key``.

    Args:
        path: the file the form saved.
        key: a key dict from :func:`review.sample.read_key`.

    Returns:
        :class:`Answers`; an empty reviewer name becomes the file stem (logged).

    Raises:
        AnswerFileError: malformed JSON/CSV, wrong format, another form's ``form_id``, an unknown level value, image
            ids not in the key, or images of the key left unscored (the message names the file and the first ids).
        OSError: the file cannot be read.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnswerFileError(f"answer file '{path}' is not UTF-8 text: {e}") from e
    suffix = path.suffix.lower()
    is_json = suffix == ".json" or (suffix != ".csv" and text.lstrip().startswith("{"))
    form_id, reviewer, answers = (_read_json if is_json else _read_csv)(path, text)
    if form_id != key["form_id"]:
        raise AnswerFileError(f"answer file '{path}' is for form '{form_id}', but the key is for form "
                              f"'{key['form_id']}'; use the key.json of the round this form came from")
    ids = [im["id"] for im in key["images"]]
    known = set(ids)
    unknown = sorted(i for i in answers if i not in known)
    if unknown:
        raise AnswerFileError(f"answer file '{path}' scores image id(s) not in the key: {_few(unknown)}")
    levels: Dict[str, str] = {}
    for image_id, level in answers.items():
        value = level.strip() if isinstance(level, str) else level
        if value not in LEVELS:
            raise AnswerFileError(f"answer file '{path}': image '{image_id}' has level {level!r}; expected one of "
                                  f"{', '.join(LEVELS)}")
        levels[image_id] = value
    missing = [i for i in ids if i not in levels]
    if missing:
        raise AnswerFileError(f"answer file '{path}' is incomplete: {len(missing)} of {len(ids)} images not scored "
                              f"({_few(missing)}); the reviewer should finish the form and save again")
    reviewer = reviewer.strip()
    if not reviewer:
        reviewer = path.stem
        log.warning("answer file '%s' has no reviewer name; using '%s'", path, reviewer)
    return Answers(reviewer=reviewer, path=path, form_id=form_id, levels={i: levels[i] for i in ids})


def read_all_answers(paths: Iterable[PathLike], key: Mapping) -> List[Answers]:
    """Read several answer files (see :func:`read_answers`).

    Raises:
        AnswerFileError: as :func:`read_answers`, or two files with the same reviewer name (both files named).
    """
    out: List[Answers] = []
    for p in paths:
        a = read_answers(p, key)
        twin = next((b for b in out if b.reviewer == a.reviewer), None)
        if twin is not None:
            raise AnswerFileError(f"answer files '{twin.path}' and '{a.path}' are both from reviewer '{a.reviewer}'; "
                                  "pass one file per reviewer")
        out.append(a)
    if not out:
        raise AnswerFileError("no answer files given")
    return out


def _few(items: List[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")
