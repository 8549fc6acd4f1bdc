"""Configs are data: every paper config loads; a bad one fails with one line naming file and key."""

import pytest

from repro.config import CONFIG_DIR, Config, dumps_toml, load_config
from repro.errors import UserError

ALL = sorted(CONFIG_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_paper_configs_load_and_say_what_they_reproduce(path):
    cfg = load_config(path)
    header = path.read_text().split("\n\n")[0]
    assert "Reproduces" in header or "reproduces" in header, f"{path.name}: header must name its table row"
    assert cfg.description


def test_required_configs_exist():
    names = {p.stem for p in ALL}
    assert {"alexnet_2gpu", "alexnet_2gpu_code145", "alexnet_1gpu_half", "ablation_no_lrn",
            "ablation_nonoverlap_pool", "ablation_no_cross_links"} <= names


def test_code145_differs_from_paper_text_on_every_fidelity_point():
    paper, code = load_config(CONFIG_DIR / "alexnet_2gpu.toml"), load_config(CONFIG_DIR / "alexnet_2gpu_code145.toml")
    assert paper.model.lrn == "paper" and code.model.lrn == "code145"
    assert paper.model.conv1_order == "paper" and code.model.conv1_order == "code145"
    assert not paper.model.conv2_rnorm and code.model.conv2_rnorm
    assert (paper.init.weight_std.conv3, code.init.weight_std.conv3) == (0.01, 0.03)
    assert (paper.optim.bias_lr_mult, code.optim.bias_lr_mult) == (1.0, 2.0)
    assert paper.schedule.kind == "plateau" and code.schedule.drop_epochs == [25, 51, 79]
    assert (paper.augment.lighting, code.augment.lighting) == ("paper", "code145")
    assert (paper.augment.mean, code.augment.mean) == ("crop", "centre")
    assert (paper.model.fc8, code.model.fc8) == ("split", "tower0")
    assert code.augment.lighting_off_epoch == 67 and code.schedule.freeze_conv1_epoch == 72


def write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("[model]\nlrn_flavour = 'paper'\n", ["bad.toml", "model.lrn_flavour", "unknown key"]),
    ("[modle]\nlrn = 'paper'\n", ["bad.toml", "modle", "unknown section"]),
    ("[optim]\nlr = 'fast'\n", ["bad.toml", "optim.lr", "must be a number"]),
    ("[model]\ntowers = 2.5\n", ["bad.toml", "model.towers", "must be an integer"]),
    ("[model]\ncross_links = 1\n", ["bad.toml", "model.cross_links", "true or false"]),
    ("[model]\nlrn = 'caffe'\n", ["bad.toml", "model.lrn", "not one of"]),
    ("[optim]\nmomentum = 1.5\n", ["bad.toml", "optim.momentum", "above its maximum"]),
    ("[model.widths]\nconv2 = 255\n", ["bad.toml", "model.widths.conv2", "does not divide between 2 towers"]),
    ("[schedule]\nkind = 'epochs'\n", ["bad.toml", "drop_epochs"]),
    ("extends = 'missing.toml'\n", ["missing.toml", "not found"]),
    ("[model\n", ["bad.toml", "not valid TOML"]),
])
def test_bad_config_fails_with_one_line(tmp_path, text, words):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_extends_and_overrides(tmp_path):
    base = write(tmp_path, "[optim]\nlr = 0.02\n", "base.toml")
    child = write(tmp_path, f"extends = '{base.name}'\n[model]\nlrn = 'none'\n", "child.toml")
    cfg = load_config(child, ["optim.momentum=0.5", "train.placement=single"])
    assert (cfg.optim.lr, cfg.model.lrn, cfg.optim.momentum, cfg.train.placement) == (0.02, "none", 0.5, "single")
    assert cfg.name == "child"
    with pytest.raises(UserError, match="optim.nesterov"):
        load_config(child, ["optim.nesterov=true"])
    with pytest.raises(UserError, match="section.key=value"):
        load_config(child, ["lr0.1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIG_DIR / "alexnet_2gpu_code145.toml")
    again = load_config(write(tmp_path, dumps_toml(cfg), "alexnet_2gpu_code145.toml"))
    assert again == cfg


def test_defaults_are_the_paper_text(tmp_path):
    empty = load_config(write(tmp_path, "", "empty.toml"))
    paper = load_config(CONFIG_DIR / "alexnet_2gpu.toml")
    empty.name = paper.name = ""
    empty.description = paper.description = ""
    empty.data.workers = paper.data.workers
    empty.augment.on, empty.train.checkpoint_every = paper.augment.on, paper.train.checkpoint_every
    assert empty == paper == Config(data=empty.data, augment=empty.augment, train=empty.train)


def test_any_string_survives_the_run_directory(tmp_path):
    """A description over several lines, with quotes, backslashes, tabs and control characters,
    is written into config.toml so that resume, eval and report read it back unchanged."""
    from repro import rundir

    text = 'two\nlines, "quoted", back\\slash, tab\there, bell\x07, \u00fcml\u00e4ut'
    cfg = load_config(CONFIG_DIR / "alexnet_2gpu.toml")
    cfg.description = text
    run = tmp_path / "odd\nname"
    run.mkdir()
    rundir.write_config(run, cfg)
    back = rundir.read_config(run)
    assert back.description == text and dumps_toml(back) == dumps_toml(cfg)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(UserError, match=r"'optim.lr' = .* must be a finite number"):
        load_config(CONFIG_DIR / "alexnet_2gpu.toml", [f"optim.lr={value}"])
    with pytest.raises(UserError, match="init.weight_std.conv3"):
        load_config(CONFIG_DIR / "alexnet_2gpu.toml", [f"init.weight_std.conv3={value}"])
