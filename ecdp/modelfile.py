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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ecdp.bounds import AT_LEAST_0, MAX_LEVELS, MAX_NET_SIZE, MAX_PARAMETERS, POSITIVE, SCALE, SIGMA, STEPS, Range
from ecdp.choices import GRIDS, PARAMETRIZATIONS, SOLVERS
from ecdp.errors import UserError
from ecdp.fileio import atomic_path, atomic_paths
from ecdp.nets import NetConfig, PRESETS, build, count_parameters
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


def _whole(allowed):
    return lambda value: type(value) is int and value in allowed, f"a whole number {allowed}"


def _number(allowed):
    return lambda value: type(value) in (int, float) and value in allowed, f"a finite number {allowed}"


def _whole_list(allowed, longest):
    def valid(value):
        return isinstance(value, list) and 0 < len(value) <= longest and all(type(v) is int and v in allowed
                                                                             for v in value)
    return valid, f"a list of 1 to {longest} whole numbers {allowed}"


def _one_of(choices):
    return lambda value: value in choices, f"one of {', '.join(map(repr, choices))}"


CHECKS = {
    "scale": _whole(SCALE),
    "sigma": _number(SIGMA),
    "param": _one_of(PARAMETRIZATIONS),
    "c": _number(AT_LEAST_0),
    "solver": _one_of(SOLVERS),
    "steps": _whole(STEPS),
    "grid": _one_of(GRIDS),
}
NET_SIZE = Range(1, MAX_NET_SIZE)
NET_CHECKS = {int: _whole(NET_SIZE), float: _number(POSITIVE), tuple[int, ...]: _whole_list(NET_SIZE, MAX_LEVELS)}


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
        with torch.device("meta"):   # shapes only: nothing is allocated
            parameters = count_parameters(build(net))
    except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as e:
        raise ModelFileError(f"{source}: \"net\" describes no network that can be built ({e}).") from None
    if parameters > MAX_PARAMETERS:
        raise ModelFileError(f"{source}: \"net\" describes a network of {parameters:,} parameters, more than the "
                             f"limit of {MAX_PARAMETERS:,}.")
    return net


def save_model(folder, net, config):
    """Write the weights and the config into ``folder``, together (``ecdp.fileio.atomic_paths``)."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_paths(folder / WEIGHTS, folder / CONFIG) as (weights, config_file):
        save_file(state, str(weights), metadata={"format": FORMAT})
        config_file.write_text(json.dumps(config.to_json(), indent=2) + "\n")


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
    return read_tensors(path, expected, "its config")


def read_tensors(path: Path, expected: dict, owner: str) -> dict:
    """The tensors of the safetensors file `path`, checked whole against `expected` ({name: tensor}):
    the header first (the same names and shapes, before any tensor is read), then that every float
    value is finite. owner names what `expected` comes from in the messages ('its config'). Raises
    ModelFileError naming the file and the problem."""
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_shapes(path, shapes, expected, owner)
            state = {k: f.get_tensor(k) for k in shapes}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a valid safetensors file ({e}).") from None
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        raise ModelFileError(f"{path} holds non-finite weights (NaN or infinity) in {len(broken)} tensors "
                             f"(e.g. {broken[0]}).")
    return state


def _check_shapes(path, shapes, expected, owner):
    missing, unexpected = expected.keys() - shapes.keys(), shapes.keys() - expected.keys()
    if missing or unexpected:
        raise ModelFileError(f"{path} does not match {owner}: {len(missing)} tensors missing "
                             f"(e.g. {_first(missing)}), {len(unexpected)} unexpected (e.g. {_first(unexpected)}).")
    for k, v in expected.items():
        if shapes[k] != tuple(v.shape):
            raise ModelFileError(f"{path} does not match {owner}: {k} has shape "
                                 f"{shapes[k]}, {owner} needs {tuple(v.shape)}.")


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
    return read_tensors(path, encoder.state_dict(), "the encoder of model.preset (trained with another preset?)")
