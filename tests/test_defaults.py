"""One set of defaults: every entry point samples with the model's own sampler and the same engine."""
import pytest
from PIL import Image

from ecdp.choices import DEFAULT_ENGINE
from ecdp.cli import main
from ecdp.modelfile import read_config
from ecdp.upscaler import Upscaler
from helpers import random_uint8, save_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), solver="heun", steps=1, grid="uniform")


@pytest.fixture
def built(monkeypatch):
    """The (engine, solver, steps, grid) of every Upscaler made while the test runs."""
    settings, init = [], Upscaler.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        settings.append((self.engine, self.sampler.solver, self.sampler.steps, self.sampler.grid))
    monkeypatch.setattr(Upscaler, "__init__", record)
    return settings


def entry_points(model, tmp_path, *options):
    """Run every entry point once on a small input, with the same command-line options."""
    photo = tmp_path / "photo.png"
    Image.fromarray(random_uint8((16, 16, 3))).save(photo)
    (tmp_path / "hr").mkdir()
    Image.fromarray(random_uint8((32, 32, 3))).save(tmp_path / "hr" / "a.png")
    common = ["--checkpoint", str(model), *options]
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out.png"), *common]) == 0
    assert main(["eval", "--data", str(tmp_path / "hr"), *common]) == 0
    assert main(["demo", "--out", str(tmp_path / "demo"), *common]) == 0
    api = {"engine": "reference", "steps": 2} if options else {}
    Upscaler.from_pretrained(str(model), **api)


def test_every_entry_point_uses_the_models_sampler_and_the_default_engine(model, tmp_path, built):
    entry_points(model, tmp_path)
    config = read_config(model)
    assert built == [(DEFAULT_ENGINE, config.solver, config.steps, config.grid)] * 4


def test_options_override_every_entry_point_the_same_way(model, tmp_path, built):
    entry_points(model, tmp_path, "--engine", "reference", "--steps", "2")
    config = read_config(model)
    assert built == [("reference", config.solver, 2, config.grid)] * 4
