"""Model files: safetensors weights plus a JSON config; nothing is ever unpickled.

A model is a folder holding ``model.safetensors`` and ``config.json``. The config names the
network (a preset or its full sizes), the scale, sigma (eq. 5's constant), the parametrization
and the default sampler.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ecdp.choices import GRIDS, PARAMETRIZATIONS, SOLVERS
from ecdp.errors import UserError
from ecdp.fileio import atomic_path
from ecdp.nets import NetConfig, PRESETS, build
from ecdp.sampling import SamplerSpec

FORMAT = "ecdp-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ModelFileError(UserError, ValueError):
    """A model file that is missing, of the wrong kind, or does not match its config."""


@dataclass
class ModelConfig:
    """Everything needed besides the weights to rebuild and run a model."""

    net: NetConfig = field(default_factory=lambda: PRESETS["tiny"])
    scale: int = 4
    sigma: float = 0.1
    param: str = "hybrid"
    c: float = 1.0
    solver: str = SamplerSpec.solver
    steps: int = SamplerSpec.steps
    grid: str = SamplerSpec.grid

    @property
    def lr_multiple(self) -> int:
        """What LR heights and widths must be multiples of, so that scale times them is a multiple
        of the U-Net's size_multiple."""
        multiple = self.net.size_multiple
        return multiple // math.gcd(multiple, self.scale)

    def to_json(self):
        d = dataclasses.asdict(self)
        d["net"] = _preset_name(self.net) or dataclasses.asdict(self.net)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_json(cls, d, source="config"):
        if d.get("format") != FORMAT:
            raise ModelFileError(f"{source} is not an ECDP model config (no \"format\": \"{FORMAT}\").")
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"{source} has format version {d.get('format_version')}; "
                                 f"this ECDP reads version {FORMAT_VERSION}.")
        fields = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ModelFileError(f"{source} has unknown keys: {', '.join(sorted(unknown))}.")
        for key, value in fields.items():
            if key != "net":
                _check_value(key, value, CHECKS[key], source)
        fields["net"] = _net_config(fields.get("net", "tiny"), source)
        return cls(**fields)


def _positive_int(value):
    return type(value) is int and value >= 1


def _positive_number(value):
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _non_negative_number(value):
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _positive_ints(value):
    return isinstance(value, list) and len(value) > 0 and all(map(_positive_int, value))


def _one_of(choices):
    return lambda value: value in choices, f"one of {', '.join(map(repr, choices))}"


CHECKS = {
    "scale": (_positive_int, "a whole number of at least 1"),
    "sigma": (_positive_number, "a finite number above 0"),
    "param": _one_of(PARAMETRIZATIONS),
    "c": (_non_negative_number, "a finite number of at least 0"),
    "solver": _one_of(SOLVERS),
    "steps": (_positive_int, "a whole number of at least 1"),
    "grid": _one_of(GRIDS),
}
NET_CHECKS = {int: (_positive_int, "a whole number of at least 1"),
              float: (_positive_number, "a finite number above 0"),
              tuple[int, ...]: (_positive_ints, "a non-empty list of whole numbers of at least 1")}


def _check_value(key, value, check, source):
    valid, expected = check
    if not valid(value):
        raise ModelFileError(f"{source}: \"{key}\" must be {expected}, got {json.dumps(value)}.")


def _preset_name(net):
    return next((name for name, cfg in PRESETS.items() if cfg == net), None)


def _net_config(value, source):
    if isinstance(value, str):
        if value not in PRESETS:
            raise ModelFileError(f"{source} names an unknown preset {value!r} (known: {', '.join(PRESETS)}).")
        return PRESETS[value]
    if not isinstance(value, dict):
        raise ModelFileError(f"{source}: \"net\" must be a preset name ({', '.join(PRESETS)}) or an object of "
                             f"network sizes, got {json.dumps(value)}.")
    types = {f.name: f.type for f in dataclasses.fields(NetConfig)}
    unknown = set(value) - set(types)
    if unknown:
        raise ModelFileError(f"{source}: \"net\" has unknown keys: {', '.join(sorted(unknown))}.")
    for key, item in value.items():
        _check_value(f"net.{key}", item, NET_CHECKS[types[key]], source)
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    try:
        build(net)
    except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as e:
        raise ModelFileError(f"{source}: \"net\" describes no network that can be built ({e}).") from None
    return net


def save_model(folder, net, config):
    """Write the weights and the config into ``folder``, each atomically."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    with atomic_path(folder / CONFIG) as tmp:
        tmp.write_text(json.dumps(config.to_json(), indent=2) + "\n")


def read_config(folder):
    """The ModelConfig of a model folder."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ModelFileError(f"{folder} is not an ECDP model: {CONFIG} is missing.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not an ECDP model config.")
    return ModelConfig.from_json(data, source=str(path))


def load_model(folder, device="cpu"):
    """Rebuild the network of a model folder and load its weights; return (net, config)."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFileError(f"{folder} does not exist.")
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a model folder (expected a folder with {WEIGHTS} and {CONFIG}).")
    config = read_config(folder)
    net = build(config.net)
    net.load_state_dict(_read_weights(folder / WEIGHTS, net.state_dict()))
    return net.to(device).eval(), config


def _read_weights(path, expected):
    if not path.is_file():
        raise ModelFileError(f"{path.parent} is not an ECDP model: {WEIGHTS} is missing.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a valid safetensors file ({e}).") from None
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ModelFileError(f"{path} does not match its config: {len(missing)} tensors missing "
                             f"(e.g. {_first(missing)}), {len(unexpected)} unexpected (e.g. {_first(unexpected)}).")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ModelFileError(f"{path} does not match its config: {k} has shape "
                                 f"{tuple(state[k].shape)}, the config needs {tuple(v.shape)}.")
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        raise ModelFileError(f"{path} holds non-finite weights (NaN or infinity) in {len(broken)} tensors "
                             f"(e.g. {broken[0]}).")
    return state


def _first(keys):
    return min(keys) if keys else "none"


DEFAULT_MODEL = Path(__file__).parent / "weights" / "default"


def resolve_model(path):
    """A model folder from a path or the name ``default`` (the model shipped inside the package)."""
    if str(path) != "default":
        return Path(path)
    if not (DEFAULT_MODEL / CONFIG).is_file():
        raise ModelFileError(f"the built-in default model is missing from this installation ({DEFAULT_MODEL}); "
                             "reinstall ecdp or pass a model folder (--checkpoint PATH).")
    return DEFAULT_MODEL


ENCODER_FILE = "encoder.safetensors"
"""The encoder stage's output in its run folder (``train.init_encoder`` of the score stage)."""


def write_encoder(path, encoder, preset):
    """Encoder weights as safetensors, with the preset in the metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "ecdp-encoder", "preset": preset})


def read_encoder(path, encoder):
    """The state dict of an encoder-stage output (its folder or its file) that fits ``encoder``."""
    path = Path(path)
    path = path / ENCODER_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"train.init_encoder: {path} does not exist (expected the encoder stage's {ENCODER_FILE}).")
    state = load_file(str(path))
    expected = encoder.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != v.shape for k, v in expected.items()):
        raise UserError(f"{path} does not fit the encoder of model.preset (trained with another preset?).")
    return state
