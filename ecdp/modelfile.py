"""Model files: safetensors weights plus a JSON config; nothing is ever unpickled.

A model is a folder holding ``model.safetensors`` and ``config.json``. The config names the
network (a preset or its full sizes), the scale, sigma (eq. 5's constant), the parametrization
and the default sampler.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ecdp.errors import UserError
from ecdp.fileio import atomic_path
from ecdp.nets import NetConfig, PRESETS, build

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
    solver: str = "heun"
    steps: int = 10
    grid: str = "logsnr"

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
        fields["net"] = _net_config(fields.get("net", "tiny"), source)
        return cls(**fields)


def _preset_name(net):
    return next((name for name, cfg in PRESETS.items() if cfg == net), None)


def _net_config(value, source):
    if isinstance(value, str):
        if value not in PRESETS:
            raise ModelFileError(f"{source} names an unknown preset {value!r} (known: {', '.join(PRESETS)}).")
        return PRESETS[value]
    try:
        return NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    except TypeError as e:
        raise ModelFileError(f"{source} has an invalid network description: {e}.") from None


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
    return state


def _first(keys):
    return min(keys) if keys else "none"


DEFAULT_MODEL = Path(__file__).parent / "weights" / "default"


def resolve_model(path):
    """A model folder from a path or the name ``default`` (the model shipped inside the package)."""
    if str(path) != "default":
        return Path(path)
    if not (DEFAULT_MODEL / CONFIG).is_file():
        raise ModelFileError("no built-in default model is installed yet; pass a model folder (--checkpoint PATH).")
    return DEFAULT_MODEL
