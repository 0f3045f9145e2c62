"""Sampler end to end (y, z1) -> SR: the reference (eager fp32; dopri5 at tol 1e-3, or the model's
fixed-step solver) against the fast engine as the entry points run it (ecdp.speed.Speed.auto:
on the CPU channels_last, bf16 where the CPU has bf16 arithmetic; bf16 and CUDA graphs on GPU) at the same solver, and the fast engine over solvers and NFE."""
import pytest
import torch

from bench.harness import CASES, CUDA, DEVICE, MAIN_CASE, inputs, measure, record, shape_text
from bench.roofline import work
from ecdp.pipeline import SuperResolver
from ecdp.sampling import SamplerSpec
from ecdp.speed import Speed

PATHS = ["reference-dopri5", "reference", "fast"]   # fast replays CUDA graphs on a GPU
SWEEP = [("euler", 10), ("euler", 20), ("heun", 5), ("rk4", 3), ("rk4", 5), ("dpmpp2m", 10), ("dpmpp2m", 20)]
SWEEP_ROUNDS = 3 if CUDA else 1   # heun 10 steps: test_sampler's fast path on the main case
TOL = 1e-3


def sampler(path, net, config, **settings):
    """(run, solver text, Speed): run(y, z1) -> (sr, nfe) on `path`; settings override the
    config's solver and steps (SamplerSpec.of)."""
    if path == "reference-dopri5":
        resolver = SuperResolver(net, config, SamplerSpec(solver="dopri5", atol=TOL, rtol=TOL))
        return resolver.run, f"dopri5 tol {TOL:g}", resolver.speed
    spec = SamplerSpec.of(config, **settings)
    speed = Speed.reference() if path == "reference" else Speed.auto(DEVICE, spec.fixed_step)
    resolver = SuperResolver(net, config, spec, speed)
    return resolver.run, f"{spec.solver} {spec.steps} steps, {spec.grid} grid", speed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_sampler(benchmark, models, case, path):
    bench_solve(benchmark, models, case, path)
    benchmark.extra_info["comparison"] = str(case)


@pytest.mark.parametrize("solver,steps", SWEEP, ids=[f"{solver}{steps}" for solver, steps in SWEEP])
def test_solver(benchmark, models, solver, steps):
    bench_solve(benchmark, models, MAIN_CASE, "fast", rounds=SWEEP_ROUNDS, solver=solver, steps=steps)


def bench_solve(benchmark, models, case, path, rounds=None, **settings):
    net, config, model = models(case.model)
    run, solver, speed = sampler(path, net, config, **settings)
    y, z1 = inputs(case, config.scale)
    with torch.no_grad():
        sr, nfe = measure(benchmark, lambda: run(y, z1), rounds=rounds or case.rounds, warmup=case.warmup,
                          batch=case.batch, model=model, path=path, solver=solver, dtype=speed.describe(),
                          precision=speed.precision)
    record(benchmark, nfe=nfe, flops=work(config.net, case.lr, config.scale).sample_flops(nfe, case.batch),
           shape=shape_text(y.shape, sr.shape))
