"""Training configuration: nested dataclasses loaded from YAML, with ``--set section.key=value`` overrides.

Every field is documented where it is declared. Each value is checked when it is set, from the
file or from ``--set``: its type, its range (RANGES) and its choices (CHOICES); an unknown key is
a UserError that names it and suggests the closest valid key. ``resume_changes`` says which
changes a resumed run may take (RESUMABLE) and which it refuses.
"""
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ecdp.bounds import (AT_LEAST_0, MAX_BATCH, MAX_BATCH_PIXELS, MAX_CROP, MAX_SIGMA_CROPS, MAX_TRAIN_STEPS, MAX_WORKERS, POSITIVE,
                         SCALE, SEED, SIGMA, STEPS, Range)
from ecdp.choices import EVALS_PER_STEP, GRIDS, PARAMETRIZATIONS, SOLVERS, STAGES
from ecdp.data import AUGMENTS
from ecdp.errors import UserError
from ecdp.features import FEATURE_MAPS
from ecdp.memory import physical_memory
from ecdp.nets import PRESETS
from ecdp.sampling import SamplerSpec

CHOICES = {
    "model.preset": tuple(PRESETS),
    "model.param": PARAMETRIZATIONS,
    "data.augment": AUGMENTS,
    "quality_stage.feature": FEATURE_MAPS,
    "quality_stage.solver": SOLVERS,
    "quality_stage.grid": GRIDS,
    "sample.solver": SOLVERS,
    "sample.grid": GRIDS,
}


_SCHEDULE_RANGES = {
    "steps": Range(1, MAX_TRAIN_STEPS), "minutes": POSITIVE, "batch": Range(1, MAX_BATCH), "lr": POSITIVE,
    "encoder_lr": AT_LEAST_0, "warmup": Range(0, MAX_TRAIN_STEPS), "decay_steps": Range(0, MAX_TRAIN_STEPS),
    "ema": Range(0, 1, high_open=True),
}
RANGES = {
    "model.scale": SCALE,
    "model.sigma": SIGMA,
    "model.c": AT_LEAST_0,
    "data.crop": Range(1, MAX_CROP),
    "data.center_resize": Range(1, MAX_CROP),
    "data.cache_mb": Range(0, None if physical_memory() is None else physical_memory() // 2**20),
    "data.workers": Range(0, MAX_WORKERS),
    "data.sigma_crops": Range(1, MAX_SIGMA_CROPS),
    **{f"{section}.{name}": allowed for section in ("train", "encoder_stage", "quality_stage")
       for name, allowed in _SCHEDULE_RANGES.items()},
    "train.gamma": Range(0, 1, low_open=True),
    "train.clip": AT_LEAST_0,
    "train.t_eps": Range(0, 1, low_open=True, high_open=True),
    "train.checkpoint_every": Range(0, MAX_TRAIN_STEPS),
    "train.keep_checkpoints": Range(0, MAX_TRAIN_STEPS),
    "train.log_every": Range(1, MAX_TRAIN_STEPS),
    "train.seed": SEED,
    "train.check_sync_every": Range(0, MAX_TRAIN_STEPS),
    "quality_stage.weight": AT_LEAST_0,
    "quality_stage.ode_steps": STEPS,
    "sample.steps": STEPS,
}
"""The range of each numeric key (of each item of a list); null stays allowed where the type has it."""

RESUMABLE = ("train.steps", "train.minutes", "train.lr", "train.encoder_lr", "train.warmup", "train.decay_steps",
             "train.gamma", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
             "train.check_sync_every", "train.amp", "train.channels_last", "train.compile", "data.workers",
             "data.cache_mb")
"""Keys a resumed run may change (with the same names in encoder_stage and quality_stage, and every
sample.* key): the learning-rate schedule, when to stop, how often to log and checkpoint, how the
data are loaded, how fast the step runs (amp, channels_last, compile: float rounding only), and the
sampler stored in the exported model. Every other key changes the model, its objective or the data
order, and a resumed run refuses a change of it."""


@dataclass
class ModelSection:
    """The network and the diffusion in normalized residual space."""

    preset: str = "tiny"
    """Network size: a preset of ecdp.nets (tiny, small, paper)."""
    scale: int = 4
    """Super-resolution factor s: LR images are HR images downscaled by s."""
    sigma: float | None = None
    """std of x - mu(y) (eq. 5's constant); null estimates it from data.sigma_crops training crops."""
    param: str = "hybrid"
    """Parametrization of the noise estimate: hybrid, eps or x0 (eq. 14, 15, 18)."""
    c: float = 1.0
    """Exponent of the hybrid mixing weight lambda(t) = alpha(t)**c."""


@dataclass
class DataSection:
    """Training images and how crops are made from them."""

    hr: list[str] = field(default_factory=list)
    """HR image folders, searched recursively (``--data`` replaces this list)."""
    lr: list[str] = field(default_factory=list)
    """LR folders paired one to one with ``hr`` (same relative names, optional xS suffix); empty:
    LR images are made by bicubic downscaling, quantized to 8 bits."""
    crop: int | None = 64
    """HR crop size, a multiple of model.scale; null uses whole images (all of one size)."""
    center_resize: int | None = None
    """Center-crop each HR image to a square and resize it to this size first (CelebA 160,
    ImageNet 256); null keeps images as they are."""
    augment: str = "dihedral"
    """Random augmentation of the crops: none, flip (horizontal) or dihedral (flips and 90-degree turns)."""
    cache_mb: int = 1024
    """Decode all images into memory at start when they take at most this many MiB; 0 never."""
    workers: int = 2
    """DataLoader worker processes per training process (0: load in the training process)."""
    sigma_crops: int = 256
    """Number of random training crops over which model.sigma is estimated when it is null."""


@dataclass
class TrainSection:
    """Optimization of the score stage; the other stages override some of these fields."""

    steps: int = 200
    """Number of optimizer steps of the stage."""
    minutes: float | None = None
    """Stop earlier, after the first step that ends this many minutes into the stage (checked every
    log_every steps), then checkpoint and export as at the last step; null: no time limit."""
    batch: int = 8
    """Global batch size, split evenly across processes."""
    lr: float = 1e-4
    """Adam learning rate of the denoiser (of every parameter in the encoder stage)."""
    encoder_lr: float = 1e-5
    """Adam learning rate of the LR encoder."""
    warmup: int = 500
    """Steps of linear learning-rate warm-up from 0."""
    decay_steps: list[int] = field(default_factory=list)
    """Steps at which the learning rate is multiplied by gamma."""
    gamma: float = 0.5
    """Learning-rate decay factor at each of decay_steps."""
    clip: float = 10.0
    """Gradient values are clipped to [-clip, clip]; 0 disables clipping."""
    ema: float = 0.999
    """Decay of the exponential moving average of the weights (evaluated and exported)."""
    t_eps: float = 1e-5
    """Smallest diffusion time drawn by the score-matching loss."""
    checkpoint_every: int = 1000
    """Write a checkpoint and the EMA model every this many steps and at the end (0: at the end only)."""
    keep_checkpoints: int = 2
    """Number of most recent checkpoints kept in OUT/checkpoints (0: all); with 2 or more, a damaged
    latest checkpoint leaves an intact one to resume from."""
    log_every: int = 10
    """Append the mean loss to OUT/log.csv every this many steps."""
    seed: int = 0
    """Seed of the initial weights, the data order, the crops and the noise."""
    init: str | None = None
    """Model folder whose weights start the stage (required by the quality stage: the score-stage
    OUT/model)."""
    init_encoder: str | None = None
    """Encoder-stage output (its OUT folder or OUT/encoder.safetensors) that initializes the encoder."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    channels_last: bool = False
    """Keep the weights, the images and the optimizer state in channels_last memory format (NHWC), which
    the convolutions of cuDNN under bf16 prefer; the loss is the same up to float rounding."""
    compile: bool = False
    """Run the loss module (network and loss, forward and backward) through torch.compile; the first
    steps take longer while it compiles (seconds to minutes)."""
    check_sync_every: int = 0
    """With several processes, compare a checksum of the weights across processes every this many
    steps and stop if they differ; 0 never."""


@dataclass
class StageOverrides:
    """Fields that replace train.* in one stage; null keeps the train value."""

    steps: int | None = None
    """Number of optimizer steps of the stage."""
    minutes: float | None = None
    """Time limit of the stage in minutes."""
    batch: int | None = None
    """Global batch size of the stage."""
    lr: float | None = None
    """Learning rate of the stage."""
    encoder_lr: float | None = None
    """Learning rate of the encoder in the stage (unused by the encoder stage)."""
    warmup: int | None = None
    """Warm-up steps of the stage."""
    decay_steps: list[int] | None = None
    """Decay steps of the stage."""
    ema: float | None = None
    """EMA decay of the stage."""


@dataclass
class QualityStage(StageOverrides):
    """Overrides of the quality stage, and the image quality loss (eq. 19) it adds."""

    weight: float = 0.5
    """Weight of the quality loss added to the score-matching loss."""
    feature: str = "vgg19"
    """Feature map F of the quality loss (ecdp.features): pixel or vgg19."""
    feature_weights: str | None = None
    """Weight file of the feature map (null: its default location, see ecdp.features)."""
    solver: str = SamplerSpec.solver
    """Fixed-step ODE solver of the sample SR(y) inside the loss."""
    ode_steps: int = SamplerSpec.steps
    """Steps of that solver."""
    grid: str = SamplerSpec.grid
    """Time grid of that solver: uniform or logsnr."""
    adjoint: bool = True
    """Gradients through the solve by the adjoint method (memory independent of ode_steps)."""

    @property
    def sampler(self) -> SamplerSpec:
        """The solve inside the loss."""
        return SamplerSpec(self.solver, self.ode_steps, self.grid)


@dataclass
class SampleSection:
    """Default sampler stored in the exported model."""

    solver: str = SamplerSpec.solver
    """ODE solver: dopri5, euler, heun, rk4 or dpmpp2m."""
    steps: int = SamplerSpec.steps
    """Steps of a fixed-step solver."""
    grid: str = SamplerSpec.grid
    """Time grid of a fixed-step solver: uniform or logsnr."""

    @property
    def sampler(self) -> SamplerSpec:
        """The default sampler of the exported model."""
        return SamplerSpec(self.solver, self.steps, self.grid)


@dataclass
class Config:
    """A training configuration."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    encoder_stage: StageOverrides = field(default_factory=StageOverrides)
    quality_stage: QualityStage = field(default_factory=QualityStage)
    sample: SampleSection = field(default_factory=SampleSection)

    def stage_settings(self, stage):
        """train.* with the overrides of ``stage`` applied."""
        if stage not in STAGES:
            raise UserError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
        overrides = {"encoder": self.encoder_stage, "quality": self.quality_stage}.get(stage)
        if overrides is None:
            return self.train
        changed = {f.name: getattr(overrides, f.name) for f in dataclasses.fields(StageOverrides)}
        return dataclasses.replace(self.train, **{k: v for k, v in changed.items() if v is not None})

    def to_dict(self):
        return dataclasses.asdict(self)


def load_config(path=None, overrides=()):
    """A Config from a YAML file (None: the defaults), then ``key=value`` overrides applied in order."""
    config = Config()
    if path is not None:
        _apply(config, _read_yaml(path), source=str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} is not of the form section.key=value.")
        set_value(config, key.strip(), value.strip(), source="--set")
    _check(config)
    return config


def set_value(config, key, value, source="--set"):
    """Set the dotted ``key`` to ``value`` (a string is parsed as the field's type), after checking its
    type, range and choices; a UserError names the key, the source and what is allowed."""
    section_name, _, name = key.partition(".")
    section = getattr(config, section_name, None) if section_name in _fields(Config) else None
    if section is None or name not in _fields(type(section)):
        raise UserError(f"unknown config key {key!r} in {source}{_suggestion(key)}")
    hint = typing.get_type_hints(type(section))[name]
    value = _coerce(value, hint, f"{key} (in {source})")
    _check_value(key, value, source, nullable=isinstance(hint, types.UnionType))
    setattr(section, name, value)


def resume_changes(saved, config, stage):
    """The changes from ``saved`` (Config.to_dict of a checkpointed run) to ``config`` that matter to
    ``stage``, as (refused, allowed): lists of 'key old -> new'; allowed are those in RESUMABLE.
    Keys missing from ``saved`` are taken as unchanged."""
    sections = ["model", "data", "train", "sample"] + {"encoder": ["encoder_stage"],
                                                       "quality": ["quality_stage"]}.get(stage, [])
    current = config.to_dict()
    refused, allowed = [], []
    for section in sections:
        for name, value in current[section].items():
            old = saved.get(section, {}).get(name, value)
            if old != value:
                (allowed if _resumable(section, name) else refused).append(f"{section}.{name} {old!r} -> {value!r}")
    return refused, allowed


def valid_keys():
    """All dotted keys of a Config."""
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)]


def _resumable(section, name):
    """Whether a resumed run may change ``section.name`` (stage overrides as their train.* key)."""
    if section == "sample":
        return True
    return f"{'train' if section.endswith('_stage') else section}.{name}" in RESUMABLE


def _check_value(key, value, source, nullable):
    """Raise a UserError when ``value`` of ``key`` is outside its choices or its range."""
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{key} is {value!r} in {source}; choose one of {', '.join(CHOICES[key])}.")
    allowed = RANGES.get(key)
    for item in (value if isinstance(value, list) else [value]):
        if allowed is not None and item is not None and item not in allowed:
            raise UserError(f"{key} (in {source}) must be {allowed.describe(item)}{' or null' if nullable else ''}, "
                            f"got {item!r}.")


def _check(config):
    """Raise a UserError for settings that contradict each other."""
    quality = config.quality_stage
    if quality.adjoint and not quality.sampler.fixed_step:
        raise UserError(f"quality_stage.solver {quality.solver!r} has no adjoint; choose one of "
                        f"{', '.join(EVALS_PER_STEP)} or set quality_stage.adjoint to false.")
    scale, crop = config.model.scale, config.data.crop
    if scale < 1 or (crop is not None and (crop < scale or crop % scale)):
        raise UserError(f"data.crop ({crop}) must be a positive multiple of model.scale ({scale}).")
    for stage in STAGES:
        batch = config.stage_settings(stage).batch
        if crop is not None and batch * crop**2 > MAX_BATCH_PIXELS:
            key = "train.batch" if stage == "score" else f"{stage}_stage.batch"
            raise UserError(f"{key} ({batch}) times data.crop ({crop}) squared is {batch * crop**2:,} pixels a batch, "
                            f"more than the limit of {MAX_BATCH_PIXELS:,}.")


def _read_yaml(path):
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"config file {path} cannot be read as YAML ({e}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections.")
    return data


def _apply(config, data, source):
    for section_name, values in data.items():
        if section_name not in _fields(Config):
            sections = sorted(_fields(Config))
            raise UserError(f"unknown config section {section_name!r} in {source}{_suggestion(section_name, sections)}")
        if not isinstance(values, (dict, type(None))):
            raise UserError(f"{source}: {section_name} must be a section of key: value pairs.")
        for name, value in (values or {}).items():
            set_value(config, f"{section_name}.{name}", value, source=source)


def _fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


def _suggestion(key, candidates=None):
    """'; did you mean ...?' naming the closest of ``candidates`` (default: all keys), or '.'."""
    close = difflib.get_close_matches(str(key), candidates or valid_keys(), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else "."


def _coerce(value, hint, where):
    """``value`` (parsed YAML, or a string from the command line) as type ``hint``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if typing.get_origin(hint) is list:
        if isinstance(value, str) and value.startswith("["):
            value = _parse_yaml(value, where)
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, args[0], where) for v in items]
    return _scalar(value, hint, where)


def _scalar(value, kind, where):
    if isinstance(value, str) and kind is not str:
        value = _parse_yaml(value, where)
    try:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    except ValueError:
        pass
    raise UserError(f"{where} must be of type {kind.__name__}, got {value!r}.")


def _parse_yaml(text, where):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"{where}: cannot parse {text!r}.") from None
