from pathlib import Path

import pytest
import yaml

from ecdp.config import Config, load_config, resume_changes, valid_keys
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


@pytest.mark.parametrize("item, message", [
    ("train.steps=0", r"train.steps \(in --set\) must be in \[1, 1000000000\], got 0\."),
    ("train.steps=-5", r"train.steps \(in --set\) must be in \[1, 1000000000\], got -5\."),
    ("train.batch=0", r"train.batch \(in --set\) must be in \[1, 4096\], got 0\."),
    ("data.workers=-1", r"data.workers \(in --set\) must be in \[0, 256\], got -1\."),
    ("data.sigma_crops=0", r"data.sigma_crops \(in --set\) must be in \[1, 100000\], got 0\."),
    ("train.lr=-1", r"train.lr \(in --set\) must be a finite number greater than 0, got -1.0\."),
    ("train.lr=nan", r"train.lr \(in --set\) must be a finite number greater than 0, got nan\."),
    ("train.warmup=-3", r"train.warmup \(in --set\) must be in \[0, 1000000000\], got -3\."),
    ("train.ema=2", r"train.ema \(in --set\) must be a finite number in \[0, 1\), got 2.0\."),
    ("model.sigma=-1", r"model.sigma \(in --set\) must be a finite number in \[0.0001, 1.0\] or null, got -1.0\."),
    ("model.sigma=0", r"model.sigma \(in --set\) must be a finite number in \[0.0001, 1.0\] or null, got 0.0\."),
    # more of each kind: infinities, list items, stage overrides, seeds, choices
    ("train.minutes=inf", r"train.minutes \(in --set\) must be a finite number greater than 0 or null, got inf\."),
    ("train.decay_steps=[10, -1]", r"train.decay_steps \(in --set\) must be in \[0, 1000000000\], got -1\."),
    ("quality_stage.batch=0", r"quality_stage.batch \(in --set\) must be in \[1, 4096\] or null, got 0\."),
    ("train.seed=-1", r"train.seed \(in --set\) must be in \[0, "),
    ("train.t_eps=0", r"train.t_eps \(in --set\) must be a finite number in \(0, 1\), got 0.0\."),
    ("quality_stage.feature=lpips", r"quality_stage.feature is 'lpips' in --set; choose one of pixel, vgg19\."),
    # bounded by what they cost, and by what float32 holds
    ("sample.steps=1000000000", r"sample.steps \(in --set\) must be in \[1, 1000\], got 1000000000\."),
    ("quality_stage.ode_steps=5000", r"quality_stage.ode_steps \(in --set\) must be in \[1, 1000\], got 5000\."),
    ("model.sigma=1e300", r"model.sigma \(in --set\) must be a finite number in \[0.0001, 1.0\] or null, got 1e\+300\."),
    ("train.lr=1e39", r"train.lr \(in --set\) must be a finite number greater than 0 that float32 holds, got 1e\+39\."),
    ("train.t_eps=1e-50", r"train.t_eps \(in --set\) must be a finite number in \(0, 1\) that float32 holds, got 1e-50\."),
    ("data.crop=1000000", r"data.crop \(in --set\) must be in \[1, 4096\] or null, got 1000000\."),
    ("model.scale=1000", r"model.scale \(in --set\) must be in \[1, 16\], got 1000\."),
])
def test_out_of_range_values_are_named_with_their_range(item, message):
    with pytest.raises(UserError, match=f"^{message}"):
        load_config(None, [item])


def test_a_batch_is_bounded_by_its_pixels(tmp_path):
    with pytest.raises(UserError, match=r"^quality_stage.batch \(4096\) times data.crop \(4096\) squared is "
                                        r"68,719,476,736 pixels a batch, more than the limit of 67,108,864\.$"):
        load_config(None, ["data.crop=4096", "train.batch=1", "encoder_stage.batch=1", "quality_stage.batch=4096"])
    assert load_config(None, ["data.crop=1024", "train.batch=64"]).train.batch == 64


def test_yaml_values_are_range_checked_naming_the_file(tmp_path):
    with pytest.raises(UserError, match=r"^train.ema \(in .*config.yaml\) must be a finite number in \[0, 1\)"):
        load_config(write(tmp_path, "train:\n  ema: 1.0\n"))
    with pytest.raises(UserError, match=r"^model.c \(in .*config.yaml\) must be a finite number at least 0"):
        load_config(write(tmp_path, "model:\n  c: .nan\n"))


def test_edges_of_the_ranges_are_allowed():
    config = load_config(None, ["train.ema=0", "train.warmup=0", "data.workers=0", "train.steps=1", "model.c=0",
                                "train.gamma=1", "model.sigma=null", "train.checkpoint_every=0"])
    assert (config.train.ema, config.train.steps, config.model.sigma) == (0.0, 1, None)


def test_resume_changes_split_schedule_from_model_and_data():
    saved = load_config(None, ["train.steps=4"]).to_dict()
    refused, allowed = resume_changes(saved, load_config(None, [
        "train.steps=8", "train.lr=2e-4", "data.workers=0", "sample.steps=4", "model.scale=2", "data.crop=32",
        "train.batch=4", "model.param=eps", "quality_stage.steps=9"]), "score")
    assert refused == ["model.scale 4 -> 2", "model.param 'hybrid' -> 'eps'", "data.crop 64 -> 32",
                       "train.batch 8 -> 4"]
    assert allowed == ["data.workers 2 -> 0", "train.steps 4 -> 8", "train.lr 0.0001 -> 0.0002", "sample.steps 10 -> 4"]
    refused, allowed = resume_changes(saved, load_config(None, ["train.steps=4", "quality_stage.steps=9",
                                                              "quality_stage.weight=1"]),
                                      "quality")
    assert refused == ["quality_stage.weight 0.5 -> 1.0"] and allowed == ["quality_stage.steps None -> 9"]
