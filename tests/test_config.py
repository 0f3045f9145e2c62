from pathlib import Path

import pytest
import yaml

from ecdp.config import Config, load_config, valid_keys
from ecdp.errors import UserError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_defaults(tmp_path):
    config = load_config(write(tmp_path, "model:\n  scale: 8\ntrain:\n  lr: 2.0e-4\n  decay_steps: [10, 20]\n"
                                         "data:\n  crop: 96\n"))
    assert config.model.scale == 8 and config.train.lr == 2e-4 and config.train.decay_steps == [10, 20]
    assert config.train.batch == Config().train.batch


def test_set_overrides_are_typed(tmp_path):
    config = load_config(write(tmp_path, "train:\n  lr: 1.0e-4\n"), [
        "train.lr=2e-4", "train.steps=7", "train.amp=false", "data.hr=[a, b c]", "data.lr=one",
        "model.sigma=0.25", "data.crop=null", "train.decay_steps=5", "train.init=runs/x/model"])
    assert config.train.lr == 2e-4 and isinstance(config.train.lr, float)
    assert config.train.steps == 7 and config.train.amp is False
    assert config.data.hr == ["a", "b c"] and config.data.lr == ["one"]
    assert config.model.sigma == 0.25 and config.data.crop is None
    assert config.train.decay_steps == [5] and config.train.init == "runs/x/model"


def test_misspelled_yaml_key_is_named(tmp_path):
    with pytest.raises(UserError, match="'train.lrr' in .*config.yaml; did you mean 'train.lr'"):
        load_config(write(tmp_path, "train:\n  lrr: 1.0\n"))


def test_misspelled_yaml_section_is_named(tmp_path):
    with pytest.raises(UserError, match="unknown config section 'trian' in .*; did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n"))


def test_misspelled_set_key_is_named():
    with pytest.raises(UserError, match="'train.warmpu' in --set; did you mean 'train.warmup'"):
        load_config(None, ["train.warmpu=3"])


@pytest.mark.parametrize("item, message", [
    ("train.steps=1.5", "train.steps .* must be of type int"),
    ("train.amp=maybe", "train.amp .* must be of type bool"),
    ("train.lr", "not of the form"),
    ("model.preset=huge", "model.preset is 'huge'"),
    ("data.crop=30", "multiple of model.scale"),
])
def test_bad_values_are_user_errors(item, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [item])


def test_stage_overrides():
    config = load_config(None, ["quality_stage.lr=1e-5", "quality_stage.steps=3", "train.batch=4"])
    quality = config.stage_settings("quality")
    assert (quality.lr, quality.steps, quality.batch) == (1e-5, 3, 4)
    assert config.stage_settings("score") is config.train


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_list_every_key(path):
    load_config(path)
    data = yaml.safe_load(path.read_text())
    assert sorted(f"{s}.{k}" for s, values in data.items() for k in values) == sorted(valid_keys())


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "div2k_x4.yaml", "celeba_x8.yaml", "imagenet_64_256.yaml"}
