"""Every value of a model's config.json and every weight checked on load; a non-finite output is an error."""
import json
import math
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ecdp.errors import UserError
from ecdp.modelfile import ModelFileError, load_model
from ecdp.upscaler import Upscaler
from helpers import files_under, one_line, random_uint8, save_tiny_model, upscale


@pytest.fixture
def model(tmp_path):
    return save_tiny_model(tmp_path / "model")


def set_config(model, key, value):
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("key, value, expected", [
    ("sigma", math.nan, '"sigma" must be a finite number in [0.0001, 1.0], got NaN.'),
    ("scale", 0, '"scale" must be a whole number in [1, 16], got 0.'),
    ("net", 5, '"net" must be a preset name (paper, small, tiny) or an object of network sizes, got 5.'),
    ("param", "nonsense", "\"param\" must be one of 'hybrid', 'eps', 'x0', got \"nonsense\"."),
    ("steps", 1.5, '"steps" must be a whole number in [1, 1000], got 1.5.'),
    # more of the same kinds
    ("sigma", math.inf, '"sigma" must be a finite number in [0.0001, 1.0], got Infinity.'),
    ("scale", True, '"scale" must be a whole number in [1, 16], got true.'),
    ("grid", "cosine", "\"grid\" must be one of 'uniform', 'logsnr', got \"cosine\"."),
    ("c", -1, '"c" must be a finite number at least 0, got -1.'),
    ("solver", None, "\"solver\" must be one of 'dopri5', 'euler', 'heun', 'rk4', 'dpmpp2m', got null."),
    ("net", {"ch": 0}, '"net.ch" must be a whole number in [1, 4096], got 0.'),
    ("net", {"ch_mult": "abc"}, '"net.ch_mult" must be a list of 1 to 8 whole numbers in [1, 4096], got "abc".'),
    # values bounded by what they cost and by what float32 holds
    ("steps", 10**9, '"steps" must be a whole number in [1, 1000], got 1000000000.'),
    ("sigma", 1e300, '"sigma" must be a finite number in [0.0001, 1.0], got 1e+300.'),
    ("c", 1e39, '"c" must be a finite number at least 0, got 1e+39.'),
    ("scale", 4096, '"scale" must be a whole number in [1, 16], got 4096.'),
])
def test_bad_config_values_are_one_sentence_naming_the_key(model, tmp_path, capsys, key, value, expected):
    set_config(model, key, value)
    with pytest.raises(ModelFileError) as error:
        load_model(model)
    assert str(error.value) == f"{model / 'config.json'}: {expected}"
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    assert upscale(str(model), tmp_path / "in.png", "-o", tmp_path / "out") == 1
    assert one_line(capsys) == f"ecdp upscale: error: {model / 'config.json'}: {expected}"
    assert files_under(tmp_path / "out") == []


def test_network_sizes_that_build_nothing_are_refused(model):
    set_config(model, "net", {"ch": 30, "head_groups": 16})
    with pytest.raises(ModelFileError, match='"net" describes no network that can be built'):
        load_model(model)


def test_a_network_too_large_to_hold_is_refused_before_it_is_built(model):
    """Counted on the meta device: a few bytes of config.json must not allocate a 90-billion-parameter network."""
    set_config(model, "net", {"ch": 4096})
    with pytest.raises(ModelFileError, match=r'"net" describes a network of 92,660,401,862 parameters, more than '
                                             r'the limit of 1,073,741,824\.$'):
        load_model(model)


def test_weights_of_other_shapes_are_refused_before_they_are_read(model):
    state = load_file(str(model / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = torch.zeros(3, 5)
    save_file(state, str(model / "model.safetensors"))
    with pytest.raises(ModelFileError, match=rf"does not match its config: {name} has shape \(3, 5\), its config needs"):
        load_model(model)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_refused_on_load(model, bad):
    state = load_file(str(model / "model.safetensors"))
    name = sorted(state)[3]
    state[name].view(-1)[0] = bad
    save_file(state, str(model / "model.safetensors"))
    with pytest.raises(ModelFileError, match=rf"holds non-finite weights \(NaN or infinity\) in 1 tensors \(e.g. {name}\)"):
        load_model(model)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_solve_that_ends_non_finite_is_an_error_not_a_clamped_image(model, value, monkeypatch):
    """The output map clamps to [0, 1]; it must not turn an infinity into a white (or black) pixel."""
    import ecdp.pipeline as pipeline
    up = Upscaler.from_pretrained(model, engine="reference")
    monkeypatch.setattr(pipeline, "solve", lambda model, z1, *args, **kwargs: (torch.full_like(z1, value), 1))
    with pytest.raises(UserError, match="the model gave non-finite values"):
        up.upscale(torch.rand(1, 3, 8, 8))


def test_non_finite_output_is_an_error_not_a_black_image(model):
    up = Upscaler.from_pretrained(model, engine="reference")
    with torch.no_grad():
        up.resolver.net.denoiser.head_conv.weight.fill_(3e38)
    with pytest.raises(UserError, match="the model gave non-finite values"):
        up.upscale(torch.rand(1, 3, 8, 8))


def test_steps_beyond_what_a_solve_may_cost_are_refused_on_every_path(model, tmp_path, capsys):
    """The bound lives in SamplerSpec: the Python API, the command line and the exporter all meet it."""
    sentence = "solver euler takes a whole number of steps in [1, 1000], got 1000000000"   # the model's solver
    with pytest.raises(UserError, match=rf"^{re.escape(sentence)}$"):
        Upscaler.from_pretrained(model, steps=10**9)
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    assert upscale(str(model), tmp_path / "in.png", "-o", tmp_path / "out", "--steps", "1000000000") == 1
    assert one_line(capsys) == f"ecdp upscale: error: {sentence}"
    from ecdp.export.graphs import ExportSpec, load_resolver
    with pytest.raises(UserError, match=rf"^{re.escape(sentence)}\.$"):
        load_resolver(str(model), ExportSpec(steps=10**9))
    with pytest.raises(UserError, match=r"^the tolerance atol must be a finite number in \[1e-08, 1.0\], got 1e-300$"):
        Upscaler.from_pretrained(model, solver="dopri5", atol=1e-300)
