"""What the exporters trace: the whole fixed-step solve, the encoder, and one solver step.

All three wrap one ``SuperResolver`` at the exporters' Speed (``Speed.export``: the network under
autocast at the exported precision; every block's conditioning projected and resized once per
image), so each exported form computes what the Python sampler computes. Shapes are static: the bicubic mu(y) is a pair of constant matrices
for one LR size.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ecdp.choices import MAX_PIXELS
from ecdp.errors import UserError
from ecdp.modelfile import load_model, resolve_model
from ecdp.pipeline import SuperResolver
from ecdp.sampling import ONE_STEP_SOLVERS, SamplerSpec, drift_fn
from ecdp.speed import Speed

@dataclass(frozen=True)
class ExportSpec:
    """What an exported graph is fixed to; solver, steps and grid default to the model config's."""

    lr_size: tuple[int, int] = (64, 64)
    batch: int = 1
    solver: str | None = None
    steps: int | None = None
    grid: str | None = None
    precision: str = "fp32"


def load_resolver(model: str, spec: ExportSpec, device: str = "cpu") -> SuperResolver:
    """The SuperResolver of a model folder (or "default") with the sampler of `spec`, checked;
    raises UserError for a sampler or size that cannot be exported."""
    net, config = load_model(resolve_model(model), device)
    try:
        sampler = SamplerSpec.of(config, solver=spec.solver, steps=spec.steps, grid=spec.grid)
        sampler.require_fixed_step("an exported graph")
    except ValueError as e:
        raise UserError(f"{e}.") from None
    if spec.batch < 1 or min(spec.lr_size) < 1:
        raise UserError(f"batch and LR size must be positive, got batch {spec.batch} and {_size(spec.lr_size)}.")
    pixels = spec.batch * spec.lr_size[0] * spec.lr_size[1]
    if pixels > MAX_PIXELS:
        raise UserError(f"batch {spec.batch} of {_size(spec.lr_size)} LR images is {pixels:,} pixels, more than "
                        f"the {MAX_PIXELS:,} an exported graph may take.")
    if any(n % config.lr_multiple for n in spec.lr_size):
        raise UserError(f"LR size {_size(spec.lr_size)} times the scale {config.scale} must be a multiple of "
                        f"{config.net.size_multiple} for this network.")
    return SuperResolver(net, config, sampler, Speed.export(spec.precision)).eval()


def _size(hw):
    return f"{hw[0]}x{hw[1]}"


def example_inputs(resolver: SuperResolver, spec: ExportSpec, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, noise) of the exported shapes; their values do not matter for tracing."""
    lr = torch.zeros(spec.batch, 3, *spec.lr_size, device=device)
    return lr, torch.zeros(resolver.noise_shape(lr), device=device)


def metadata(resolver: SuperResolver, spec: ExportSpec) -> dict[str, str]:
    """String key-value pairs stored in every exported file."""
    sampler = resolver.sampler
    return {"ecdp.scale": str(resolver.scale), "ecdp.sigma": repr(float(resolver.sigma)),
            "ecdp.solver": sampler.solver, "ecdp.steps": str(sampler.steps), "ecdp.grid": sampler.grid,
            "ecdp.lr_size": _size(spec.lr_size), "ecdp.batch": str(spec.batch), "ecdp.precision": spec.precision}


def step_times(resolver: SuperResolver) -> list[float]:
    """The decreasing float32 times t_0 = 1 > ... > t_steps that a host loop feeds to the step graph."""
    return resolver.sampler.times().to(torch.float32).tolist()


def export_program(module: nn.Module, args: tuple) -> torch.export.ExportedProgram:
    """torch.export of `module` on `args` (static shapes), without autograd."""
    with torch.no_grad():
        return torch.export.export(module, args, strict=False)


class EncoderGraph(nn.Module):
    """lr -> (mu, *cond): mu(y) of eq. 5 and every residual block's conditioning, once per image."""

    def __init__(self, resolver):
        super().__init__()
        self.resolver = resolver

    def forward(self, lr):
        hr_size = (lr.shape[-2] * self.resolver.scale, lr.shape[-1] * self.resolver.scale)
        return (self.resolver.upscale(lr), *self.resolver.net.encode(lr, hr_size))


class StepGraph(nn.Module):
    """(z, t, t_next, *cond) -> z_next: one full step of euler, heun or rk4 on eq. 13.

    t and t_next are per sample, shape (B,). dpmpp2m is not offered: its update needs the previous
    step's data estimate (export it as the full graph instead).
    """

    def __init__(self, resolver):
        super().__init__()
        solver = resolver.sampler.solver
        if solver not in ONE_STEP_SOLVERS:
            raise UserError(f"the step graph supports {', '.join(ONE_STEP_SOLVERS)}; {solver} carries "
                            f"state between steps, so export it with --graph full.")
        self.resolver = resolver
        self.step = ONE_STEP_SOLVERS[solver]

    def forward(self, z, t, t_next, *cond):
        r = self.resolver
        drift = drift_fn(r.model, cond)
        # The step functions broadcast times over images as (B, 1, 1, 1); the drift takes them as (B,).
        return self.step(lambda z, t: drift(z, t.reshape(-1)), z, _column(t), _column(t_next))


def _column(t):
    return t.reshape(-1, 1, 1, 1)
