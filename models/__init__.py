"""Model registry: models are looked up by the name given to ``--model``.

A model class registers itself with ``@register("name")``; its module is listed in ``_MODULES`` so that the registry
can import it on demand (importing this package stays cheap and has no side effects).
"""
from __future__ import annotations

import importlib
from typing import Callable

from util.errors import OptionError

_MODULES = {
    "pix2pix": "models.pix2pix_model",
    "pyramidpix2pix": "models.pyramidpix2pix_model",
    "cycle_gan": "models.cycle_gan_model",
    "pix2pixhd": "models.pix2pixhd_model",
    "cut": "models.cut_model",
    "asp": "models.asp_model",
    "test": "models.test_model",
}
_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering a model under ``name`` (the value of ``--model``)."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        _REGISTRY[name] = cls
        cls.model_name = name
        return cls

    return deco


def available_models() -> list[str]:
    """Names of the registered models whose module imports on this installation."""
    return sorted(_MODULES)


def find_model_using_name(name: str) -> type:
    """Return the model class registered as ``name``.

    Raises:
        OptionError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise OptionError(f"--model '{name}' is not a model; valid names: {', '.join(available_models())}")
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def get_option_setter(name: str) -> Callable:
    """The model's static ``modify_commandline_options(parser, is_train)``."""
    return find_model_using_name(name).modify_commandline_options


def create_model(opt):
    """Instantiate the model named by ``opt.model`` with the options ``opt``."""
    return find_model_using_name(opt.model)(opt)
