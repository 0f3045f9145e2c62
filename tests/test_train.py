import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from ecdp.cli import main
from ecdp.config import load_config, resume_changes
from ecdp.data import SRDataset, estimate_sigma
from ecdp.errors import UserError
from ecdp.modelfile import ENCODER_FILE, load_model
from ecdp.nets import PRESETS, RRDBEncoder
from ecdp.ranks import Ranks
from ecdp.train import Trainer, _freeze_unused, latest_checkpoint, lr_factor, train
from helpers import BASE, TINY, tensors

pytestmark = pytest.mark.usefixtures("one_thread")

def config(images, *overrides):
    return load_config(TINY, [*BASE, f"data.hr={images}", *overrides])


def run(images, out, stage="score", *overrides, resume=False):
    train(config(images, *overrides), stage=stage, out=out, resume=resume, device="cpu")


def state(out, step):
    data = json.loads((Path(out) / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())
    return {k: v for k, v in data.items() if k not in ("config", "files", "checksum")}


@pytest.fixture(scope="module")
def straight(images, tmp_path_factory):
    """A score-stage run of 4 steps in one go."""
    out = tmp_path_factory.mktemp("straight")
    run(images, out, "score", "train.steps=4")
    return out


def test_resumed_run_ends_with_the_same_weights(images, straight, tmp_path):
    run(images, tmp_path, "score", "train.steps=2")
    run(images, tmp_path, "score", "train.steps=4", resume=True)
    a, b = tensors(straight, 4), tensors(tmp_path, 4)
    for name in ("model", "ema", "optimizer"):
        assert a[name].keys() == b[name].keys()
        assert max((a[name][k] - b[name][k]).abs().max().item() for k in a[name]) <= 1e-6, name
    assert any(k.endswith(".exp_avg_sq") for k in a["optimizer"])
    assert state(straight, 4) == state(tmp_path, 4)
    rows = list(csv.reader((tmp_path / "log.csv").open()))
    assert rows[0] == ["step", "loss", "lr", "it/s"] and [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert [r[1] for r in rows[1:]] == [r[1] for r in list(csv.reader((straight / "log.csv").open()))[1:]]


def test_outputs_and_estimated_sigma(images, straight):
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    net, model_config = load_model(straight / "model")
    expected = estimate_sigma(SRDataset([str(images)], scale=4, crop=32), 4, seed=0)
    assert model_config.sigma == pytest.approx(expected, rel=1e-12) and model_config.sigma != 0.1
    assert state(straight, 4)["sigma"] == model_config.sigma
    assert (model_config.solver, model_config.steps, model_config.grid) == ("heun", 10, "logsnr")
    ema = load_file(str(straight / "checkpoints" / "step-00000004" / "ema.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())


def test_fresh_run_refuses_an_out_folder_with_checkpoints(images, straight):
    with pytest.raises(UserError, match="--resume"):
        run(images, straight, "score", "train.steps=4")
    with pytest.raises(UserError, match="score stage, not the encoder stage"):
        run(images, straight, "encoder", resume=True)


def test_encoder_stage_then_score_stage_from_its_encoder(images, tmp_path):
    code = main(["train", "--config", TINY, "--data", str(images), "--out", str(tmp_path / "enc"),
                 "--stage", "encoder", "--set", *BASE, "encoder_stage.steps=1"])
    assert code == 0
    assert (tmp_path / "enc" / ENCODER_FILE).is_file() and not (tmp_path / "enc" / "model").exists()
    encoder = load_file(str(tmp_path / "enc" / ENCODER_FILE))
    ema = load_file(str(latest_checkpoint(tmp_path / "enc") / "ema.safetensors"))
    assert all(torch.equal(v, ema[f"encoder.{k}"]) for k, v in encoder.items())
    score = config(images, f"train.init_encoder={tmp_path / 'enc'}")
    trainer = Trainer(score, "score", tmp_path / "score", Ranks(0, 1, torch.device("cpu")), resume=False)
    assert all(torch.equal(v, encoder[k]) for k, v in trainer.net.encoder.state_dict().items())


def test_quality_stage_runs_from_a_score_model(images, straight, tmp_path):
    run(images, tmp_path, "quality", f"train.init={straight / 'model'}", "quality_stage.steps=1",
        "quality_stage.feature=pixel", "quality_stage.solver=euler", "quality_stage.ode_steps=1")
    rows = list(csv.reader((tmp_path / "log.csv").open()))
    assert len(rows) == 2 and float(rows[1][2]) == pytest.approx(1e-5)
    _, model_config = load_model(tmp_path / "model")
    assert model_config.sigma == load_model(straight / "model")[1].sigma


def test_quality_stage_needs_a_score_model(images, tmp_path):
    with pytest.raises(UserError, match="train.init"):
        run(images, tmp_path, "quality", "quality_stage.feature=pixel")


def test_unused_encoder_blocks_are_frozen():
    encoder = RRDBEncoder(PRESETS["paper"])
    _freeze_unused(encoder)
    frozen = [i for i, block in enumerate(encoder.blocks) if not any(p.requires_grad for p in block.parameters())]
    assert frozen == [22]


def test_learning_rate_schedule():
    settings = load_config(None, ["train.warmup=4", "train.decay_steps=[10, 20]", "train.gamma=0.5"]).train
    assert [lr_factor(s, settings) for s in (0, 3, 9, 10, 19, 20)] == [0.25, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_time_limit_stops_early_with_a_checkpoint_and_model(images, tmp_path):
    run(images, tmp_path, "score", "train.steps=50", "train.minutes=1e-9", "train.log_every=3",
        "train.checkpoint_every=100")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_channels_last_run_resumes_without_it_to_the_same_weights(images, straight, tmp_path):
    run(images, tmp_path, "score", "train.steps=2", "train.channels_last=true")
    assert next(Trainer(config(images, "train.channels_last=true"), "score", tmp_path / "other",
                        Ranks(0, 1, torch.device("cpu")), resume=False).net.parameters()).dim() == 4
    run(images, tmp_path, "score", "train.steps=4", resume=True)
    a, b = tensors(straight, 4), tensors(tmp_path, 4)
    for name in ("model", "ema"):
        assert max((a[name][k] - b[name][k]).abs().max().item() for k in a[name]) <= 1e-5, name
    assert "train.channels_last True -> False" in (tmp_path / "train.log").read_text()


class HostReads(TorchDispatchMode):
    """The aten ops under it that read a tensor's value on the host or make a tensor from host data
    (on CUDA each one waits for the GPU), except reads of the tensors ``on_host`` (kept on the host
    on CUDA too)."""

    HOST = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.equal", "aten.is_nonzero")

    def __init__(self, on_host=()):
        super().__init__()
        self.seen, self.on_host = [], {id(t) for t in on_host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.HOST) and not (args and id(args[0]) in self.on_host):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stage, overrides", [
    ("score", []),
    ("quality", ["quality_stage.solver=heun", "quality_stage.ode_steps=2"]),
    ("quality", ["quality_stage.solver=rk4", "quality_stage.ode_steps=1", "quality_stage.grid=uniform"]),
    ("encoder", []),
])
def test_training_step_reads_nothing_on_the_host(images, straight, tmp_path, stage, overrides):
    settings = config(images, f"train.init={straight / 'model'}" if stage == "quality" else "train.init=null",
                      "quality_stage.feature=pixel", *overrides)
    trainer = Trainer(settings, stage, tmp_path, Ranks(0, 1, torch.device("cpu")), resume=False)
    batch = next(iter(trainer._loader()))
    trainer._train_step(batch)   # the first step makes the resize matrices and Adam's state
    adam_steps = [state["step"] for state in trainer.optimizer.state.values()]   # on the host on CUDA too
    with HostReads(on_host=adam_steps) as reads:
        loss = trainer._train_step(batch)
    assert reads.seen == [] and loss.isfinite()
    with HostReads() as reads:
        loss.item()
    assert reads.seen == ["aten._local_scalar_dense.default"]   # the check sees a host read


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["score", "quality"])
def test_compiled_loss_module_trains_like_the_eager_one(images, straight, tmp_path, stage):
    overrides = ["train.steps=4"] if stage == "score" else [
        f"train.init={straight / 'model'}", "quality_stage.steps=2", "quality_stage.feature=pixel",
        "quality_stage.ode_steps=2"]
    eager = straight if stage == "score" else tmp_path / "eager"
    if stage == "quality":
        run(images, eager, stage, *overrides)
    run(images, tmp_path / "compiled", stage, *overrides, "train.compile=true")
    logs = [[float(row[1]) for row in list(csv.reader((out / "log.csv").open()))[1:]]
            for out in (eager, tmp_path / "compiled")]
    assert len(logs[0]) > 1 and logs[1] == pytest.approx(logs[0], rel=1e-4)
    steps = 4 if stage == "score" else 2
    a, b = tensors(eager, steps), tensors(tmp_path / "compiled", steps)
    assert a["model"].keys() == b["model"].keys()
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]) <= 1e-4


def test_speed_keys_are_typed_and_may_change_on_resume():
    saved = load_config(None).to_dict()
    refused, allowed = resume_changes(saved, load_config(None, ["train.channels_last=true", "train.compile=true"]),
                                      "quality")
    assert refused == [] and allowed == ["train.channels_last False -> True", "train.compile False -> True"]
    with pytest.raises(UserError, match=r"^train.compile \(in --set\) must be of type bool, got 3\."):
        load_config(None, ["train.compile=3"])
    with pytest.raises(UserError, match=r"^train.channels_last \(in --set\) must be of type bool, got 'yes please'"):
        load_config(None, ["train.channels_last=yes please"])
