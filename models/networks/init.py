"""Weight initialisation (pix2pix/CycleGAN convention)."""
from __future__ import annotations

from torch import nn
from torch.nn import init

from util.errors import OptionError


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights with N(0, gain) | xavier_normal(gain) | kaiming_normal(fan_in) | orthogonal(gain),
    biases with 0, and BatchNorm weights with N(1, gain), biases with 0. Returns ``net`` (modified in place).

    Raises:
        OptionError: unknown ``init_type`` (names ``--init_type``).
    """
    if init_type not in ("normal", "xavier", "kaiming", "orthogonal"):
        raise OptionError(f"--init_type '{init_type}' is not supported; choose normal, xavier, kaiming or orthogonal")

    def fn(m: nn.Module) -> None:
        name = type(m).__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                init.normal_(m.weight, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name and m.weight is not None:
            init.normal_(m.weight, 1.0, init_gain)
            init.constant_(m.bias, 0.0)

    net.apply(fn)
    return net
