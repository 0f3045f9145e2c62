"""One training step (ecdp.train.DiffusionLoss, backward, Adam; bf16 autocast on GPU): score
matching (eq. 16, encoder included), and fine-tuning with the quality loss (eq. 19, weight 0.5,
pixel feature map) through a heun solve by the discrete adjoint."""
import contextlib

import pytest
import torch

from bench.harness import CUDA, DEVICE, Case, dtype_name, measure, shape_text, trainable
from bench.roofline import work
from ecdp.features import feature_map
from ecdp.resize import downscale
from ecdp.train import DiffusionLoss

if CUDA:
    SCORE, QUALITY = Case("paper", 40, 16), Case("paper", 40, 4)   # HR 160x160 crops, as in training
else:
    SCORE, QUALITY = Case("default", 16, 4), Case("default", 16, 1)
QUALITY_STEPS = 10 if CUDA else 4
T_EPS = 1e-5
LR = 1e-4
QUALITY_WEIGHT = 0.5


@pytest.mark.parametrize("loss", ["score_matching", "quality_adjoint"])
def test_training_step(benchmark, models, loss):
    case = SCORE if loss == "score_matching" else QUALITY
    net, config, model = models(case.model)
    net = trainable(net)
    options = dict(scale=config.scale, sigma=config.sigma, t_eps=T_EPS)
    nfe = 0
    if loss == "quality_adjoint":
        nfe = 2 * QUALITY_STEPS
        options.update(feature=feature_map("pixel"), weight=QUALITY_WEIGHT,
                       quality_options=dict(solver="heun", steps=QUALITY_STEPS, adjoint=True))
    objective = DiffusionLoss(net, **options)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    generator = torch.Generator(DEVICE).manual_seed(0)
    x = torch.rand(case.batch, 3, case.lr * config.scale, case.lr * config.scale, generator=generator,
                   device=DEVICE)
    y = downscale(x, config.scale)

    def step():
        with autocast():
            value = objective(y, x, generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    measure(benchmark, step, rounds=case.rounds, batch=case.batch, model=model, path=loss,
            dtype="bf16 autocast" if CUDA else dtype_name(torch.float32), shape=shape_text(y.shape, x.shape),
            nfe=nfe or None, solver=f"heun {QUALITY_STEPS} steps, adjoint" if nfe else None,
            flops=work(config.net, case.lr, config.scale).training_flops(case.batch, nfe))


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else contextlib.nullcontext()
