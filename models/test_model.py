"""``--model test``: apply a trained generator to inputs only (``--dataset_mode single``), e.g. H&E without IHC."""
from __future__ import annotations

import logging

from models import register
from models.base_model import BaseModel
from models.networks import define_G, generator_extras

log = logging.getLogger(__name__)


def _default_suffix(opt) -> str:
    """``'_A'`` when the run ``<checkpoints_dir>/<name>`` was trained with ``--model cycle_gan`` (its H&E -> IHC
    generator is ``G_A``), else ``''``; read from the run's ``train_opt.json`` (no saved options: ``''``)."""
    from models.inference import generator_net_name
    from options import load_train_options
    from util.errors import OptionError

    try:
        train_model = load_train_options(opt.checkpoints_dir, opt.name).get("model")
    except OptionError:
        return ""
    suffix = generator_net_name(train_model)[1:]
    if suffix:
        log.info("--model test on a %s run: loading generator G%s (pass --model_suffix to choose)", train_model, suffix)
    return suffix


@register("test")
class TestModel(BaseModel):
    """Loads ``<epoch>_net_G.pth`` (or ``net_G<model_suffix>``) and produces ``fake`` from ``real``. Test only."""

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = False):
        if is_train:
            from util.errors import OptionError

            raise OptionError("--model test is for test.py only; train with --model pix2pix, pyramidpix2pix, cycle_gan or pix2pixhd")
        parser.set_defaults(dataset_mode="single")
        parser.add_argument("--model_suffix", default=None,
                            help="load <epoch>_net_G<suffix>.pth, e.g. _A for a CycleGAN generator G_A (default: _A "
                                 "for a run trained with --model cycle_gan, none otherwise)")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        if opt.model_suffix is None:
            opt.model_suffix = _default_suffix(opt)
        self.loss_names = []
        self.visual_names = ["real_A", "fake_B"]
        self.model_names = ["G" + opt.model_suffix]
        net = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout,
                       opt.init_type, opt.init_gain, device=self.device, **generator_extras(opt))
        setattr(self, "netG" + opt.model_suffix, net)

    def _accepts_set_of(self, model_name: str) -> bool:
        return True  # applies the generator of any run

    def forward(self) -> None:
        self.fake_B = self.run_generator(getattr(self, "netG" + self.opt.model_suffix), self.real_A)

    def optimize_parameters(self) -> None:
        raise RuntimeError("the test model is not trainable")
