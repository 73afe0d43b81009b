"""Training options of a checkpoint folder for test.py, including folders of released weights.

A run trained here has ``train_opt.json``. The authors' released BCI weights are a folder with ``latest_net_G.pth``
and, in some releases, the classic pix2pix ``train_opt.txt`` (one ``name: value`` line per option between
``----------------- Options`` and ``----------------- End`` markers, ``[default: ...]`` comments after a tab). Neither
a ``train_opt.json`` nor a checkpoint-set manifest is required: :func:`resolve_train_options` takes the options from

1. ``train_opt.json`` when present (``source = "train_opt.json"``);
2. else ``train_opt.txt`` (``source = "train_opt.txt"``), values converted with the test parser's option types;
3. else nothing (``source = "command line and release defaults"``): the networks are built from the command line and
   the model's defaults — ``--model pyramidpix2pix`` defaults to the released BCI generator (resnet_9blocks, batch
   norm, ngf 64; see models/pyramidpix2pix_model.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

from util.errors import OptionError

SOURCE_JSON = "train_opt.json"
SOURCE_TXT = "train_opt.txt"
SOURCE_DEFAULTS = "command line and release defaults"


def parse_opt_txt(text: str) -> Dict[str, str]:
    """``{name: value string}`` from a pix2pix ``train_opt.txt``.

    Raises:
        ValueError: no ``name: value`` line at all.
    """
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("-----") or ":" not in line:
            continue
        key, _, rest = line.partition(":")
        key = key.strip()
        value = rest.split("\t[default:", 1)[0].strip()
        if key.isidentifier():
            out[key] = value
    if not out:
        raise ValueError("no 'name: value' option line")
    return out


def _convert(parser: argparse.ArgumentParser, raw: Dict[str, str]) -> dict:
    """Typed values for the options the parser knows (others are kept as strings)."""
    actions = {a.dest: a for a in parser._actions}
    out: dict = {}
    for key, value in raw.items():
        a = actions.get(key)
        if a is None:
            out[key] = value
        elif isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out[key] = value == "True"
        elif a.type is not None and value not in ("None", ""):
            try:
                out[key] = a.type(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                out[key] = value
        else:
            out[key] = None if value == "None" else value
    return out


def resolve_train_options(checkpoints_dir: str, name: str, parser: Optional[argparse.ArgumentParser] = None
                          ) -> Tuple[dict, str]:
    """``(training options, source)`` of ``<checkpoints_dir>/<name>`` (sources in the module doc).

    Raises:
        OptionError: the folder does not exist, or its train_opt.json / train_opt.txt cannot be read.
    """
    from options import load_train_options

    exp = Path(checkpoints_dir) / name
    if not exp.is_dir():
        raise OptionError(f"no checkpoint folder '{exp}' (expected <epoch>_net_G.pth and train_opt.json there; "
                          f"released weights need only latest_net_G.pth): is --name '{name}' / --checkpoints_dir "
                          f"'{checkpoints_dir}' right?")
    if (exp / SOURCE_JSON).is_file():
        return load_train_options(checkpoints_dir, name), SOURCE_JSON
    txt = exp / SOURCE_TXT
    if txt.is_file():
        try:
            raw = parse_opt_txt(txt.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise OptionError(f"cannot read the training options '{txt}': {e}") from e
        return (_convert(parser, raw) if parser is not None else raw), SOURCE_TXT
    return {}, SOURCE_DEFAULTS


def describe(source: str, exp: Path) -> str:
    """The log line saying where test.py took the network options from."""
    if source == SOURCE_DEFAULTS:
        return (f"'{exp}' has no train_opt.json nor train_opt.txt (released weights?): networks built from the command "
                "line and the model's defaults (pyramidpix2pix: the released BCI generator)")
    return f"network options from {exp / source}"


def saved_model_name(checkpoints_dir: str, name: str) -> Optional[str]:
    """``model`` recorded in train_opt.json or train_opt.txt, or None."""
    exp = Path(checkpoints_dir) / name
    try:
        if (exp / SOURCE_JSON).is_file():
            return json.loads((exp / SOURCE_JSON).read_text(encoding="utf-8")).get("model")
        if (exp / SOURCE_TXT).is_file():
            return parse_opt_txt((exp / SOURCE_TXT).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError):
        return None
    return None
