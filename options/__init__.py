"""Command-line options: ``parse_train(argv)``, ``parse_test(argv)`` and saving/loading a run's options.

Parsing has no side effects (nothing printed, written, created or seeded): :func:`parse` applies ``--suffix``, runs
the model's option checks, checks ``--gpu_ids`` against the visible devices and sets ``opt.device``; the entry points
then call :func:`seed_everything`, and :func:`save_options` writes ``train_opt.txt`` / ``train_opt.json``.
``parse_test`` reads ``<checkpoints_dir>/<name>/train_opt.json`` when it exists, only to default ``--model`` to the
training run's model.

Options may be abbreviated as argparse allows (``--ng 8`` for ``--ngf 8``); ``opt.explicit`` lists the options given
on the command line in any spelling, which :func:`apply_train_options` compares against the training run.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from options.base_options import _Parser, add_base_options
from options.test_options import add_test_options
from options.train_options import add_train_options
from util.errors import OptionError, UserError
from util.fileio import atomic_write_text
from util.logging_setup import HelpFormatter

log = logging.getLogger(__name__)


def build_parser(is_train: bool, argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """Return the full parser for ``argv``: base + train/test options + the chosen model's and dataset's options.

    Raises:
        OptionError: an unknown ``--model`` or ``--dataset_mode`` (the message lists the valid names) or bad syntax.
    """
    import data
    import models

    argv = list(argv) if argv is not None else []
    parser = _Parser(prog="train.py" if is_train else "test.py",
                     formatter_class=HelpFormatter, add_help=True)
    add_base_options(parser)
    (add_train_options if is_train else add_test_options)(parser)
    # first pass: which model and dataset?
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if not is_train:
        saved_model = _saved_model(known.checkpoints_dir, known.name)
        if saved_model is not None:
            parser.set_defaults(model=saved_model)
            known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    models.get_option_setter(known.model)(parser, is_train)
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    data.get_option_setter(known.dataset_mode)(parser, is_train)
    return parser


def parse(argv: Optional[Sequence[str]] = None, is_train: bool = True) -> argparse.Namespace:
    """Parse ``argv`` (a list of strings; ``None`` = no arguments, never ``sys.argv``) into an options namespace.

    The namespace gets ``isTrain``, ``explicit`` (sorted names of the options given on the command line), ``name``
    with ``--suffix`` applied, and the derived ``device`` (``torch.device``); nothing is printed, written or seeded.
    For testing (``is_train`` False) ``--model`` defaults to the model of the run's saved ``train_opt.json``.

    Raises:
        OptionError: unknown options, bad values, an unknown model or dataset mode, a ``--suffix`` that cannot be
            formatted, a ``--gpu_ids`` device that does not exist.
    """
    argv = list(argv) if argv is not None else []
    parser = build_parser(is_train, argv)
    opt = parser.parse_args(argv)
    opt.isTrain = is_train
    opt.explicit = sorted(_explicit_dests(parser, argv))
    if opt.suffix:
        try:
            opt.name = opt.name + ("_" + opt.suffix.format(**vars(opt)))
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise OptionError(f"--suffix '{opt.suffix}' cannot be formatted ({type(e).__name__}: {e}); use option "
                              "names in braces, e.g. --suffix {model}_{netG}_size{load_size}") from None
    import models

    if is_train:
        from options.train_options import check_train_options

        check_train_options(opt)
    checker = getattr(models.find_model_using_name(opt.model), "check_options", None)
    if checker is not None:
        checker(opt)
    opt.device = _device(opt.gpu_ids)
    if is_train:
        from options.train_options import resolve_fast_cpu

        resolve_fast_cpu(opt)
    return opt


def parse_train(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse(argv, is_train=True)


def parse_test(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse(argv, is_train=False)


def _explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Names (dest) of the options written explicitly on the command line, in any spelling argparse accepts
    (``--ngf 8``, ``--ngf=8``, the abbreviation ``--ng 8``): ``argv`` is parsed again with every default suppressed,
    so only the options actually given end up in the namespace. ``parser`` is restored afterwards."""
    saved_defaults = {id(a): a.default for a in parser._actions}
    saved_parser_defaults = dict(parser._defaults)
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for a in parser._actions:
            a.default = saved_defaults[id(a)]
        parser._defaults.update(saved_parser_defaults)
    return set(vars(given))


def _saved_model(checkpoints_dir: str, name: str) -> Optional[str]:
    """The ``model`` of ``<checkpoints_dir>/<name>/train_opt.json`` when that file exists and names a registered
    model, else None (no error: test.py reports a missing or broken file later, with its own message)."""
    import models

    path = Path(checkpoints_dir) / name / "train_opt.json"
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model")
        models.find_model_using_name(model)
    except (OSError, ValueError, AttributeError, TypeError, UserError):
        return None
    return model


def _device(gpu_ids: list[int]) -> torch.device:
    """``cuda:<first id>`` when GPU ids are given, else CPU.

    Raises:
        OptionError: a GPU id is requested that does not exist on this machine (names ``--gpu_ids``).
    """
    if not gpu_ids:
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in gpu_ids if i >= n]
    if missing:
        raise OptionError(
            f"--gpu_ids {','.join(map(str, gpu_ids))}: GPU {missing} does not exist on this machine "
            f"({n} CUDA device{'s' if n != 1 else ''} visible). Use --gpu_ids -1 for CPU.")
    return torch.device(f"cuda:{gpu_ids[0]}")


def seed_everything(seed: Optional[int]) -> None:
    """Seed python, numpy and torch (all devices); make CPU kernels deterministic where PyTorch allows."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def options_to_dict(opt: argparse.Namespace) -> dict:
    """JSON-serialisable copy of the options (``device`` as a string)."""
    out = {}
    for k, v in sorted(vars(opt).items()):
        if isinstance(v, torch.device):
            v = str(v)
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


def format_options(opt: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> str:
    """The classic pix2pix options table: one ``name: value`` line each, defaults noted where they differ."""
    lines = ["----------------- Options ---------------"]
    defaults = {}
    if parser is not None:
        defaults = {a.dest: a.default for a in parser._actions}
    for k, v in sorted(options_to_dict(opt).items()):
        comment = ""
        if k in defaults and v != defaults[k]:
            comment = f"\t[default: {defaults[k]}]"
        lines.append(f"{k:>25}: {v!s:<30}{comment}")
    lines.append("----------------- End -------------------")
    return "\n".join(lines)


def save_options(opt: argparse.Namespace, phase: str = "train") -> Path:
    """Write ``<checkpoints_dir>/<name>/<phase>_opt.txt`` (human) and ``<phase>_opt.json`` (machine), atomically."""
    exp = Path(opt.checkpoints_dir) / opt.name
    exp.mkdir(parents=True, exist_ok=True)
    parser = build_parser(opt.isTrain, [f"--model={opt.model}", f"--dataset_mode={opt.dataset_mode}"])
    atomic_write_text(exp / f"{phase}_opt.txt", format_options(opt, parser) + "\n")
    atomic_write_text(exp / f"{phase}_opt.json", json.dumps(options_to_dict(opt), indent=1, sort_keys=True) + "\n")
    return exp / f"{phase}_opt.json"


def load_train_options(checkpoints_dir: str | Path, name: str) -> dict:
    """Read ``<checkpoints_dir>/<name>/train_opt.json``.

    Raises:
        OptionError: the file is missing or not valid JSON (names it and the experiment).
    """
    path = Path(checkpoints_dir) / name / "train_opt.json"
    if not path.is_file():
        raise OptionError(f"no saved training options at '{path}': is --name '{name}' / --checkpoints_dir "
                          f"'{checkpoints_dir}' the folder of a training run?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OptionError(f"cannot read saved training options '{path}': {e}") from e


# options that define the networks: test.py takes them from the training run
NETWORK_OPTIONS = ("model", "netG", "netD", "ngf", "ndf", "norm", "no_dropout", "input_nc", "output_nc", "n_layers_D",
                   "init_type", "init_gain", "direction", "n_blocks_global", "n_downsample_global",
                   "n_local_enhancers", "n_blocks_local", "num_D")


def apply_train_options(opt: argparse.Namespace, train_opt: dict, keys: Sequence[str] = NETWORK_OPTIONS) -> list[str]:
    """Copy the network-defining options of a training run into test options.

    An option written explicitly on the test command line that contradicts the training run is an error (the
    network would not match its checkpoint). ``--model test`` is allowed with any training model.

    Returns the list of options copied. Raises :class:`OptionError` naming each contradiction.
    """
    conflicts = []
    copied = []
    explicit = set(getattr(opt, "explicit", []))
    for k in keys:
        if k not in train_opt:
            continue
        if k == "model":
            continue
        if k in explicit and getattr(opt, k, None) != train_opt[k]:
            conflicts.append(f"--{k} {getattr(opt, k)} (training run used {train_opt[k]})")
            continue
        setattr(opt, k, train_opt[k])
        copied.append(k)
    if "model" in explicit and opt.model not in ("test", train_opt.get("model")):
        conflicts.append(f"--model {opt.model} (training run used {train_opt.get('model')}; use it or --model test)")
    if conflicts:
        raise OptionError("the command line contradicts the saved training options of '"
                          f"{opt.name}': " + "; ".join(conflicts) + ". Drop these options to use the run's values.")
    return copied
