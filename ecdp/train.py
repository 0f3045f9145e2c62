"""The trainer: encoder, score and quality stages (docs/design.md section 2), on one or several processes.

- ``encoder``: L1 regression of x by mu(y) + head(encoder(y)); the head is dropped and the EMA
  encoder is written to ``OUT/encoder.safetensors`` (``train.init_encoder`` of the score stage).
- ``score``: score matching (eq. 16); ``quality``: score matching + weight * quality loss (eq. 19),
  started from ``train.init``. Both write the EMA model to ``OUT/model`` (an ``ecdp`` model folder).

Adam with a learning rate per module (denoiser, encoder), linear warm-up and step decay (a pure
function of the step), gradient value clipping, EMA weights. A checkpoint (``OUT/checkpoints/step-N``,
see ecdp.checkpoints) holds the weights, EMA, optimizer and torch RNG states; all other randomness
is derived from (seed, step) and (seed, epoch, index), so a resumed run continues exactly. Under
``torchrun`` the loss module runs in DistributedDataParallel and rank 0 alone writes files; each
process takes its slice of every global batch and of its noise (ecdp.losses.batch_noise), so
several processes train as one process would on the same global batch, up to float rounding.

Speed: bf16 autocast (train.amp), channels_last memory format (train.channels_last) and torch.compile
of the loss module (train.compile, around DDP) change the results only by float rounding. The step
reads nothing back from the device and copies nothing to it but the batch: the loop synchronizes
only every log_every steps (loss, divergence and time checks). The step is not captured in a CUDA
graph: its noise comes from a generator seeded per step, Adam's learning rate and step count live
on the host, and DDP and the adjoint's backward launch work that a capture would freeze.

What each stage minimizes is in ecdp.objectives, the checkpoint files and the optimizer and RNG
states they hold in ecdp.checkpoints, the encoder stage's file in ecdp.modelfile, ``OUT/log.csv``
in ecdp.trainlog; this module runs the stages.

Nothing is lost or half written: OUT is checked before any work; a resumed run starts from the
newest intact checkpoint and refuses config changes that would alter the model or the data order
(ecdp.config.resume_changes); a non-finite loss or weight stops the run before it is saved; events
(resumes, their changes, damaged checkpoints, skipped images) are appended to ``OUT/train.log``.
"""
import copy
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ecdp import console
from ecdp.bounds import MIN_SIGMA
from ecdp.checkpoints import (CHECKPOINTS, latest_checkpoint, optimizer_meta, optimizer_state_dict,
                              optimizer_tensors, python_rng_state, remove_checkpoint, resume_point,
                              save_checkpoint, set_rng_state, torch_rng_state)
from ecdp.config import resume_changes
from ecdp.data import NOISE, BatchOrder, DataWarning, SRDataset, derived_generator, estimate_sigma
from ecdp.errors import UserError
from ecdp.features import feature_map
from ecdp.fileio import atomic_path, check_writable, os_errors, remove_stale_temporaries
from ecdp.modelfile import ENCODER_FILE, ModelConfig, load_model, read_encoder, save_model, write_encoder
from ecdp.nets import PRESETS, build
from ecdp.objectives import DiffusionLoss, RegressionLoss, Regressor
from ecdp.ranks import ranks
from ecdp.trainlog import LossLog

LOG = "log.csv"
EVENTS = "train.log"


def train(config, *, stage, out, resume=False, device=None):
    """Run ``stage`` ("encoder", "score" or "quality") of ``config``, writing into the folder ``out``."""
    with ranks(device) as process:
        if not process.is_main:
            warnings.filterwarnings("ignore", category=DataWarning)   # rank 0 reports skipped images
        Trainer(config, stage, Path(out), process, resume).run()


class Trainer:
    """One stage of training: builds everything, then runs the step loop."""

    def __init__(self, config, stage, out, process, resume):
        self.config, self.stage, self.out, self.process = config, stage, out, process
        self.settings = config.stage_settings(stage)
        check_writable(out, folder=True)
        if latest_checkpoint(out) and not resume:
            raise UserError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out.")
        checkpoint, state, tensors, self.damaged = (resume_point(out) if resume else None) or (None, None, None, [])
        if state and state["stage"] != stage:
            raise UserError(f"{checkpoint} is from the {state['stage']} stage, not the {stage} stage.")
        self.changes = self._resume_changes(checkpoint, state)
        self.dataset = _dataset(config)
        if state:
            if state["data"]["files"] != self.dataset.fingerprint():
                raise UserError(f"--resume cannot continue {checkpoint}: the training images in "
                                f"{', '.join(config.data.hr)} are not those it was trained on (files added, removed or "
                                "renamed change the data order); restore them, or train into another --out.")
            self.dataset.mark_unreadable(state["data"]["unreadable"])
        self.reported = set(self.dataset.unreadable())
        torch.manual_seed(self.settings.seed)
        self.objective, self.sigma = self._build(state)
        self.objective.to(process.device, memory_format=self._memory_format())
        self.net = self.objective.net
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self._param_groups())
        self.step = self.samples = 0
        self.checkpoint = checkpoint
        if checkpoint:
            self._load(state, tensors)
        self.wrapped = self.objective
        if process.world > 1:
            if not _same_everywhere(torch.tensor([self.step], device=process.device)):
                raise UserError(f"the processes start from different steps: {out} must be on a file system "
                                "that every node shares.")
            ids = [process.device.index] if process.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.objective, device_ids=ids)
        if self.settings.compile:
            self.wrapped = torch.compile(self.wrapped)

    def run(self):
        """Train up to settings.steps, checkpointing, logging and exporting on rank 0."""
        if self.process.is_main:
            self._begin()
        batches = iter(self._loader())
        log = LossLog(self.out / LOG, self.step, self.process)
        deadline = time.monotonic() + 60 * self.settings.minutes if self.settings.minutes else None
        last = self.step >= self.settings.steps
        self.bad_step = torch.zeros((), dtype=torch.long, device=self.process.device)
        with console.progress(self.settings.steps, initial=self.step, desc=self.stage, unit="step",
                              every=self.settings.log_every, disable=not self.process.is_main) as bar:
            while not last:
                loss = self._train_step(next(batches))
                self.step += 1
                self.samples += self.settings.batch
                self.bad_step = torch.where((self.bad_step == 0) & ~loss.isfinite(), self.step, self.bad_step)
                last = self.step >= self.settings.steps or (self._due(self.settings.log_every)
                                                            and self._time_is_up(deadline))
                log.add(loss)
                save = self._due(self.settings.checkpoint_every) or last
                if self._due(self.settings.log_every) or save:
                    self._stop_if_diverged(weights=save)
                if self._due(self.settings.log_every) or last:
                    bar.set_postfix(loss=f"{log.write(self.step, self._lr()):.4g}")
                bar.update()
                if self.process.world > 1 and self._due(self.settings.check_sync_every):
                    check_sync(self.net, self.step)
                if save:
                    self._checkpoint()

    def _resume_changes(self, checkpoint, state):
        """The allowed config changes since ``checkpoint`` ('key old -> new'); a UserError lists the
        changes that a resumed run refuses."""
        if state is None:
            return []
        refused, allowed = resume_changes(state["config"], self.config, self.stage)
        if refused:
            raise UserError(f"--resume cannot change {', '.join(refused)}, since that changes the model or the data "
                            f"order of {checkpoint}; set them back, or train into another --out.")
        return allowed

    def _begin(self):
        """Rank 0, before the first step: remove the temporaries of killed runs from OUT and the damaged
        checkpoints newer than the resumed one (the run writes them again), record the resume and its
        changes, and write OUT/config.yaml."""
        for folder in (self.out, self.out / CHECKPOINTS, self.out / "model"):
            if folder.is_dir():
                with os_errors(folder):
                    remove_stale_temporaries(folder)
        for folder, reason in self.damaged:
            remove_checkpoint(folder)
            self._record(f"checkpoint {folder} is damaged ({reason}) and was removed; resuming from the intact "
                         f"{self.checkpoint.name}.")
        if self.checkpoint:
            changed = f", with {', '.join(self.changes)}" if self.changes else ""
            self._record(f"resumed from {self.checkpoint.name} at step {self.step}{changed}.", show=bool(changed))
        self._write_config()

    def _record(self, message, show=True):
        """Append ``message`` to OUT/train.log (rank 0), and print it unless not ``show``."""
        if show:
            console.write(f"ecdp train: {message}")
        path = self.out / EVENTS
        with os_errors(path), open(path, "a") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} step {self.step}: {message}\n")

    def _stop_if_diverged(self, weights):
        """Raise a UserError (on every process) when a loss since the start, or with ``weights`` a weight of
        the network or its EMA, is not finite: nothing of it is saved."""
        first = self.bad_step.clone()
        if self.process.world > 1:
            never = torch.iinfo(first.dtype).max
            first = torch.where(first > 0, first, never)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == never, 0, first)
        step = int(first)
        if not step and weights and not all(p.isfinite().all() for m in (self.net, self.ema) for p in m.parameters()):
            step = self.step
        if step:
            kept = f"{self.checkpoint} is the last good checkpoint" if self.checkpoint else "no checkpoint was written"
            raise UserError(f"training diverged at step {step} (the loss or the weights became nan or inf) and "
                            f"stopped without saving; {kept} (lower train.lr, or check the data and model.sigma).")

    def _time_is_up(self, deadline):
        """Whether the stage's time limit has passed, in rank 0's clock (every process stops together)."""
        if deadline is None:
            return False
        up = torch.tensor([time.monotonic() > deadline], dtype=torch.int32, device=self.process.device)
        if self.process.world > 1:
            dist.broadcast(up, src=0)
        return bool(up.item())

    def _due(self, every):
        """Whether something done every ``every`` steps (0: never) is due after this step."""
        return every > 0 and self.step % every == 0

    def _train_step(self, batch):
        y, x = (v.to(self.process.device, non_blocking=True, memory_format=self._memory_format()) for v in batch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(self.step, self.settings)
        generator = derived_generator(NOISE, self.settings.seed, self.step, device=self.process.device)
        amp = self.process.device.type == "cuda" and self.settings.amp
        with torch.autocast(self.process.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = self.wrapped(y, x, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.clip:
            nn.utils.clip_grad_value_(self.net.parameters(), self.settings.clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - self.settings.ema)
        return loss.detach()

    def _memory_format(self):
        return torch.channels_last if self.settings.channels_last else torch.preserve_format

    def _lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def _build(self, state):
        """The loss module of the stage (its network initialized) and sigma (None in the encoder stage)."""
        model, settings = self.config.model, self.settings
        if self.stage == "encoder":
            net = Regressor(PRESETS[model.preset], model.scale)
            _freeze_unused(net.encoder)
            return RegressionLoss(net), None
        net = build(model.preset)
        init_sigma = None if state else self._init_weights(net)
        sigma = state["sigma"] if state else self._sigma(init_sigma)
        _freeze_unused(net.encoder)
        options = dict(scale=model.scale, sigma=sigma, t_eps=settings.t_eps,
                       batch_slice=(self.process.rank, self.process.world))
        if self.stage == "quality":
            q = self.config.quality_stage
            options.update(feature=feature_map(q.feature, q.feature_weights), weight=q.weight, quality_options=dict(
                sampler=q.sampler, param=model.param, c=model.c, adjoint=q.adjoint))
        return DiffusionLoss(net, **options), sigma

    def _init_weights(self, net):
        """Load train.init (a model folder) or train.init_encoder into ``net``; the init model's sigma."""
        init, init_encoder = self.settings.init, self.settings.init_encoder
        if self.stage == "quality" and not init:
            raise UserError("the quality stage starts from a score-stage model: set train.init=PATH/model.")
        if init and init_encoder:
            raise UserError("set train.init or train.init_encoder, not both.")
        if init_encoder:
            net.encoder.load_state_dict(read_encoder(init_encoder, net.encoder))
        if not init:
            return None
        source, source_config = load_model(init)
        if source_config.net != net.config:
            raise UserError(f"{init} is not a {self.config.model.preset} model (model.preset).")
        net.load_state_dict(source.state_dict())
        return source_config.sigma

    def _sigma(self, init_sigma):
        """model.sigma, else the init model's, else estimated from training crops."""
        sigma = self.config.model.sigma
        if sigma is not None and init_sigma is not None and sigma != init_sigma:
            raise UserError(f"model.sigma is {sigma} but train.init has sigma {init_sigma}; leave it null.")
        if sigma is None:
            sigma = init_sigma
        if sigma is None:
            sigma = estimate_sigma(self.dataset, self.config.data.sigma_crops, self.settings.seed)
            if sigma < MIN_SIGMA:
                raise UserError(f"model.sigma estimated from {self.config.data.sigma_crops} training crops is "
                                f"{sigma:.3g}, below {MIN_SIGMA}: the images have no detail beyond their bicubic "
                                "upscaling; train on other images.")
        return float(sigma)

    def _param_groups(self):
        """Adam groups: every parameter at lr (encoder stage), or the denoiser at lr and the encoder at
        encoder_lr; frozen parameters are left out."""
        def trainable(module):
            return [p for p in module.parameters() if p.requires_grad]

        if self.stage == "encoder":
            return [{"params": trainable(self.net), "initial_lr": self.settings.lr}]
        return [{"params": trainable(self.net.denoiser), "initial_lr": self.settings.lr},
                {"params": trainable(self.net.encoder), "initial_lr": self.settings.encoder_lr}]

    def _loader(self):
        order = BatchOrder(len(self.dataset), self.settings.batch, seed=self.settings.seed,
                           rank=self.process.rank, world=self.process.world, start=self.samples)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=order, num_workers=self.config.data.workers,
                                           pin_memory=self.process.device.type == "cuda")

    def _checkpoint(self):
        if self.process.is_main:
            unreadable = self.dataset.unreadable()
            for path in sorted(set(unreadable) - self.reported):
                self._record(f"skipped the unreadable training image {path}.", show=False)
            self.reported.update(unreadable)
            self.checkpoint = save_checkpoint(self.out / CHECKPOINTS, self._state(unreadable), self._tensors(),
                                              self.settings.keep_checkpoints)
            self._export()

    def _state(self, unreadable):
        return {"stage": self.stage, "step": self.step, "sigma": self.sigma, "world": self.process.world,
                "data": {"samples": self.samples, "unreadable": unreadable, "files": self.dataset.fingerprint()},
                "optimizer": optimizer_meta(self.optimizer), "rng": python_rng_state(),
                "config": self.config.to_dict()}

    def _tensors(self):
        return {"model": self.net.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": optimizer_tensors(self.optimizer), "rng": torch_rng_state()}

    def _load(self, state, tensors):
        self.net.load_state_dict(tensors["model"])
        self.ema.load_state_dict(tensors["ema"])
        saved = optimizer_state_dict(tensors["optimizer"], state["optimizer"], self.optimizer)
        configured = [group["initial_lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, lr in zip(self.optimizer.param_groups, configured):  # train.lr may change on resume
            group["initial_lr"] = lr
        set_rng_state(state["rng"], tensors["rng"])
        self.step, self.samples = state["step"], state["data"]["samples"]

    def _export(self):
        """The EMA network: OUT/encoder.safetensors (encoder stage) or the model folder OUT/model."""
        if self.stage == "encoder":
            write_encoder(self.out / ENCODER_FILE, self.ema.encoder, self.config.model.preset)
            return
        model, sampler = self.config.model, self.config.sample.sampler
        save_model(self.out / "model", self.ema, ModelConfig(
            net=PRESETS[model.preset], scale=model.scale, sigma=self.sigma, param=model.param, c=model.c,
            solver=sampler.solver, steps=sampler.steps, grid=sampler.grid))

    def _write_config(self):
        """OUT/config.yaml: the configuration of this run, sigma filled in."""
        resolved = self.config.to_dict()
        resolved["model"]["sigma"] = self.sigma
        with atomic_path(self.out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))


def lr_factor(step, settings):
    """Linear warm-up over settings.warmup steps, times gamma per passed decay step."""
    warm = min(1.0, (step + 1) / settings.warmup) if settings.warmup else 1.0
    return warm * settings.gamma ** sum(step >= s for s in settings.decay_steps)


def check_sync(module, step):
    """Raise if the parameters of ``module`` differ across processes (sums and sums of squares)."""
    params = [p.detach().double() for p in module.parameters()]
    if not _same_everywhere(torch.stack([p.sum() for p in params] + [p.square().sum() for p in params])):
        raise RuntimeError(f"the weights differ across processes after step {step}.")


def _same_everywhere(tensor):
    """Whether ``tensor`` is equal in every process."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _dataset(config):
    data, model = config.data, config.model
    if not data.hr:
        raise UserError("no training data: pass --data DIR (or set data.hr).")
    return SRDataset(data.hr, lr=data.lr, scale=model.scale, crop=data.crop, center_resize=data.center_resize,
                     augment=data.augment, cache_mb=data.cache_mb, seed=config.train.seed)


def _freeze_unused(encoder):
    """Freeze the RRDB blocks after the last tap: they never get a gradient (DDP needs every trainable
    parameter to get one)."""
    for block in encoder.blocks[encoder.taps[-1]:]:
        block.requires_grad_(False)


