"""Options: pure parsing, choices on enumerations, model/dataset-specific options, saved options."""
from __future__ import annotations

import json

import pytest

import options
from options import apply_train_options, build_parser, save_options
from util.errors import OptionError

ENUMS = {"netG", "netD", "norm", "init_type", "dataset_mode", "direction", "preprocess", "gan_mode", "lr_policy",
         "input_nc", "output_nc", "model"}


@pytest.mark.parametrize("model", ["pix2pix", "pyramidpix2pix"])
@pytest.mark.parametrize("is_train", [True, False])
def test_every_enum_option_has_choices(model, is_train):
    parser = build_parser(is_train, ["--model", model])
    for a in parser._actions:
        if a.dest in ENUMS:
            assert a.choices, f"--{a.dest} has no choices"
    assert set(ENUMS) - ({"gan_mode", "lr_policy"} if not is_train else set()) <= {a.dest for a in parser._actions}


def test_parse_has_no_side_effects(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    opt = options.parse_train(["--model", "pyramidpix2pix", "--name", "x", "--pattern", "L1_L3"])
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")
    assert opt.isTrain and opt.pattern == "L1_L3" and str(opt.device) == "cpu"


def test_model_defaults_and_paper_recipe():
    p2p = options.parse_train(["--model", "pix2pix"])
    assert (p2p.netG, p2p.norm, p2p.gan_mode, p2p.lambda_L1, p2p.pool_size) == ("unet_256", "batch", "vanilla", 100.0, 0)
    pyr = options.parse_train(["--model", "pyramidpix2pix"])
    assert (pyr.netG, pyr.netD, pyr.norm, pyr.gan_mode, pyr.batch_size, pyr.lr, pyr.beta1, pyr.preprocess) == \
        ("resnet_9blocks", "basic", "batch", "vanilla", 2, 0.0002, 0.5, "none")
    assert (pyr.pattern, pyr.lambda_L1, pyr.weight_L2, pyr.weight_L3, pyr.weight_L4) == ("L1_L2_L3_L4", 25, 25, 25, 25)
    assert not hasattr(p2p, "pattern")


def test_gpu_ids_parse():
    assert options.parse_train(["--gpu_ids", "-1"]).gpu_ids == []
    with pytest.raises(OptionError, match="--gpu_ids"):
        options.parse_train(["--gpu_ids", "a"])


def test_pattern_validated_at_parse_time():
    with pytest.raises(OptionError, match="L5"):
        options.parse_train(["--model", "pyramidpix2pix", "--pattern", "L1_L5"])
    with pytest.raises(OptionError, match="crop_size"):
        options.parse_train(["--model", "pyramidpix2pix", "--preprocess", "crop", "--crop_size", "4"])
    # L4 needs 5 px (see models.pyramid.min_image_size); L1_L2_L3 takes 4
    options.parse_train(["--model", "pyramidpix2pix", "--preprocess", "crop", "--crop_size", "4", "--pattern", "L1_L2_L3"])


def test_saved_options_round_trip(tmp_path):
    opt = options.parse_train(["--model", "pyramidpix2pix", "--checkpoints_dir", str(tmp_path), "--name", "n",
                               "--ngf", "16"])
    save_options(opt)
    saved = json.loads((tmp_path / "n" / "train_opt.json").read_text())
    assert saved["ngf"] == 16 and saved["pattern"] == "L1_L2_L3_L4" and saved["device"] == "cpu"
    txt = (tmp_path / "n" / "train_opt.txt").read_text()
    assert "ngf: 16" in " ".join(txt.split())
    assert "[default: 64]" in txt
    # test options take the network from the run; an explicit contradiction is an error
    t = options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path)])
    apply_train_options(t, options.load_train_options(tmp_path, "n"))
    assert (t.ngf, t.netG) == (16, "resnet_9blocks")
    t = options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path), "--ngf", "32"])
    with pytest.raises(OptionError, match="--ngf 32"):
        apply_train_options(t, options.load_train_options(tmp_path, "n"))
    assert not any(p.name.startswith(".") for p in (tmp_path / "n").iterdir())


def test_help_lists_model_options(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(True, ["--model", "pyramidpix2pix"]).parse_args(["--model", "pyramidpix2pix", "--help"])
    assert e.value.code == 0
    assert "--pattern" in capsys.readouterr().out


def test_parse_ignores_sys_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["train.py", "--ngf", "3"])
    assert options.parse_train(None).ngf == 64


def test_abbreviated_option_counts_as_explicit(tmp_path):
    """argparse accepts unambiguous prefixes (--ng for --ngf); such a contradiction of the training run must still
    be caught, not silently replaced by the run's value."""
    opt = options.parse_train(["--checkpoints_dir", str(tmp_path), "--name", "n", "--ngf", "16"])
    save_options(opt)
    t = options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path), "--ng", "32", "--inp=1"])
    assert {"ngf", "input_nc", "name", "checkpoints_dir"} <= set(t.explicit)
    assert "ndf" not in t.explicit and "model" not in t.explicit
    with pytest.raises(OptionError, match="--ngf 32.*--input_nc 1"):
        apply_train_options(t, options.load_train_options(tmp_path, "n"))
    # parsing for 'explicit' leaves the defaults intact
    assert (t.ndf, t.norm, t.direction) == (64, "batch", "AtoB")
    # store_true flags and '=' forms count too
    t = options.parse_test(["--no_dropout", "--netG=unet_128"])
    assert {"no_dropout", "netG"} <= set(t.explicit)


def test_bad_suffix_is_an_option_error():
    with pytest.raises(OptionError, match="--suffix"):
        options.parse_train(["--suffix", "{nope}"])
    with pytest.raises(OptionError, match="--suffix"):
        options.parse_train(["--suffix", "{0}"])
    assert options.parse_train(["--name", "x", "--suffix", "{netG}_s{load_size}"]).name == "x_unet_256_s286"


def test_test_model_defaults_to_the_training_runs(tmp_path):
    opt = options.parse_train(["--model", "pyramidpix2pix", "--checkpoints_dir", str(tmp_path), "--name", "n",
                               "--pattern", "L1_L3"])
    save_options(opt)
    t = options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path)])
    assert t.model == "pyramidpix2pix" and t.netD == "basic" and "model" not in t.explicit
    assert options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path), "--model", "test"]).model == "test"
    # no run, or an unreadable train_opt.json: the plain default
    assert options.parse_test(["--name", "none", "--checkpoints_dir", str(tmp_path)]).model == "pix2pix"
    (tmp_path / "n" / "train_opt.json").write_text("{broken")
    assert options.parse_test(["--name", "n", "--checkpoints_dir", str(tmp_path)]).model == "pix2pix"
