"""Training steps per second: ecdp.train.Trainer's step (loss, backward, clipping, Adam, EMA; bf16
autocast on GPU) on a batch already loaded, for the tiny and small presets: score matching (eq. 16,
encoder included), and the quality stage (eq. 19, pixel feature map) through a heun solve by the
discrete adjoint. Each case runs with today's settings and with the speed keys (train.channels_last,
and train.compile on a GPU), in the same run; steps/s is images/s divided by the batch."""
import numpy as np
import pytest
import torch
from PIL import Image

from bench.harness import CUDA, DEVICE, dtype_name, measure, random_model
from bench.roofline import work
from ecdp.config import load_config
from ecdp.modelfile import ModelConfig, save_model
from ecdp.ranks import Ranks
from ecdp.train import Trainer

PRESETS = ["tiny", "small"]
CROP, BATCH = (128, 32) if CUDA else (32, 2)   # HR crops: configs/small_x4.yaml on a GPU
QUALITY_STEPS = 3 if CUDA else 2
SPEED_KEYS = {"today": [], "channels_last": ["train.channels_last=true"]}
if CUDA:
    SPEED_KEYS["channels_last+compile"] = ["train.channels_last=true", "train.compile=true"]
ROUNDS, WARMUP = (20, 3) if CUDA else (1, 1)   # the warm-up steps include torch.compile's compilation


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four smooth random 8-bit photos."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        small = Image.fromarray(rng.integers(0, 256, (2 * CROP // 8, 2 * CROP // 8, 3), dtype=np.uint8))
        small.resize((2 * CROP, 2 * CROP), Image.BICUBIC).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("speed", SPEED_KEYS)
@pytest.mark.parametrize("stage", ["score", "quality"])
@pytest.mark.parametrize("preset", PRESETS)
def test_training_steps(benchmark, images, tmp_path, preset, stage, speed):
    net, _ = random_model(preset)
    init = tmp_path / "init"
    save_model(init, net, ModelConfig(net=net.config, sigma=0.1))
    config = load_config(None, [
        f"model.preset={preset}", "model.sigma=0.1", f"data.hr=[{images}]", f"data.crop={CROP}", "data.workers=0",
        f"train.batch={BATCH}", f"train.init={init}", "quality_stage.feature=pixel", "quality_stage.solver=heun",
        f"quality_stage.ode_steps={QUALITY_STEPS}", *SPEED_KEYS[speed]])
    trainer = Trainer(config, stage, tmp_path / "out", Ranks(0, 1, DEVICE), resume=False)
    batch = next(iter(trainer._loader()))
    nfe = 2 * QUALITY_STEPS if stage == "quality" else 0
    measure(benchmark, lambda: trainer._train_step(batch), rounds=ROUNDS, warmup=WARMUP, batch=BATCH,
            model=f"{preset} preset, random weights", path=f"{stage} stage, {speed}",
            dtype="bf16 autocast" if CUDA else dtype_name(torch.float32), shape=f"{BATCH}x3x{CROP}x{CROP} HR",
            nfe=nfe or None, solver=f"heun {QUALITY_STEPS} steps, adjoint" if nfe else None,
            flops=work(net.config, CROP // 4, 4).training_flops(BATCH, nfe))
    benchmark.extra_info["steps_per_s"] = benchmark.extra_info["images_per_s"] / BATCH
