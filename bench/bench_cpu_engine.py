"""The CPU engine end to end, through ``Upscaler.sample`` on a photo: the reference engine, the fast
engine in fp32 (channels_last, 1x1 convolutions on oneDNN) and the default CPU path (the fast
engine at its default precision: bf16 on CPUs with bf16 arithmetic, else fp32), at the model's own
sampler, at LR 64x48, 128x128 and a batch of 8 at 32x32. Each row records its largest difference
from the reference's output of the same case, in levels of 255."""
import numpy as np
import pytest
import torch
from PIL import Image

from bench.harness import measure, shape_text
from ecdp.upscaler import Upscaler

CPU = torch.device("cpu")
CASES = {"LR 64x48, batch 1": (48, 64, 1), "LR 128x128, batch 1": (128, 128, 1), "LR 32x32, batch 8": (32, 32, 8)}
PATHS = {"reference": {"engine": "reference"}, "fast-fp32": {"precision": "fp32"}, "fast": {}}
ROUNDS = 3
outputs = {}   # the reference's output of each case, for the other rows' differences


def photos(height, width, batch):
    """`batch` crops of scikit-image's astronaut, each resized to width x height, as (batch, 3, h, w) in [0, 1]."""
    skimage_data = pytest.importorskip("skimage.data")
    astronaut = Image.fromarray(skimage_data.astronaut())
    crops = [astronaut.crop((32 * i, 16 * i, 32 * i + 256, 16 * i + 256)) if batch > 1 else astronaut
             for i in range(batch)]
    arrays = [np.array(crop.resize((width, height), Image.BICUBIC)) for crop in crops]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("case,path", [(case, path) for case in CASES for path in PATHS])
def test_cpu_engine(benchmark, models, case, path):
    net, config, model = models("default", CPU)
    height, width, batch = CASES[case]
    upscaler = Upscaler.from_model(net, config, **PATHS[path])
    y = photos(height, width, batch)
    sr = measure(benchmark, lambda: upscaler.sample(y), device=CPU, rounds=ROUNDS, warmup=1, batch=batch,
                 model=model, path=path, dtype=upscaler.precision,
                 solver=f"{upscaler.sampler.solver} {upscaler.sampler.steps} steps, {upscaler.sampler.grid} grid",
                 shape=shape_text(y.shape, (batch, 3, height * config.scale, width * config.scale)))
    benchmark.extra_info.update(comparison=case, nfe=upscaler.last_nfe)
    if path == "reference":
        outputs[case] = sr
    elif case in outputs:
        benchmark.extra_info["levels_from_reference"] = 255 * (sr - outputs[case]).abs().max().item()
