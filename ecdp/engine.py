"""Fast engines: everything that makes sampling faster plugs in here, behind the denoiser contract.

- ``CachedDenoiser``: the encoder runs once per image and every residual block's conditioning is
  projected at LR resolution and resized once (exact: both maps are linear); each network
  evaluation only adds it. Optional autocast (bf16/fp16, fp32 ODE state), channels_last and
  ``torch.compile``.
- ``GraphedSolve``: on CUDA, the whole fixed-step solve (encoder, cache, every stage of every step,
  output) captured once per input shape in a CUDA graph and replayed; a small LRU of graphs.
"""
import collections
import contextlib
import threading

import torch
from torch import nn

from ecdp.pipeline import SuperResolver
from ecdp.resize import resize_matrix
from ecdp.sampling import EVALS_PER_STEP


class CachedDenoiser(nn.Module):
    """The denoiser contract D(z_t, t, cond) with the conditioning computed once per image."""

    def __init__(self, net, scale, *, dtype=None, channels_last=False, compile_mode=None):
        super().__init__()
        self.net, self.scale, self.dtype, self.channels_last = net, scale, dtype, channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self.denoiser = torch.compile(net.denoiser, mode=compile_mode, dynamic=False) if compile_mode else net.denoiser

    def _autocast(self, device):
        if self.dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def _layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def encode(self, y):
        """Per-block conditioning for the LR batch y, valid for every t of the solve."""
        hr_size = (y.shape[-2] * self.scale, y.shape[-1] * self.scale)
        with self._autocast(y.device):
            features = self.net.encode(self._layout(y))
            return self.net.denoiser.block_conditioning(features, hr_size, project_first=True)

    def forward(self, z_t, t, cond):
        with self._autocast(z_t.device):
            eps_hat, z0_hat = self.denoiser(self._layout(z_t), t, cond)
        return eps_hat.float(), z0_hat.float()


class CachedUpscale:
    """mu(y) with the resize matrices kept on the device (no host copies inside a CUDA graph)."""

    def __init__(self, scale):
        self.scale, self.matrices = scale, {}

    def _matrix(self, n, like):
        key = (n, like.dtype, like.device)
        if key not in self.matrices:
            self.matrices[key] = resize_matrix(n, n * self.scale, dtype=like.dtype, device=like.device)
        return self.matrices[key]

    def __call__(self, y):
        return self._matrix(y.shape[-2], y) @ y @ self._matrix(y.shape[-1], y).T


def fast_resolver(net, config, *, dtype=None, channels_last=False, compile_mode=None, **sampler):
    """A SuperResolver whose denoiser is the cached (and optionally compiled) one."""
    denoiser = CachedDenoiser(net, config.scale, dtype=dtype, channels_last=channels_last,
                              compile_mode=compile_mode)
    return SuperResolver(denoiser, config, upscale=CachedUpscale(config.scale), **sampler)


class GraphedSolve:
    """Replay a fixed-shape function fn(y, z1) -> tensor from static buffers, one set per input shape.

    On CUDA each set is a captured CUDA graph: the host only copies the inputs in, replays, and
    copies the output out, with no synchronization inside. Elsewhere the same static-buffer loop
    runs fn eagerly. A small LRU keeps the sets; a lock serializes callers (buffers are shared).
    """

    def __init__(self, fn, max_graphs=4, warmup=2):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.graphs = collections.OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, y, z1):
        key = (tuple(y.shape), y.dtype, y.device)
        with self.lock:
            if key not in self.graphs:
                self.graphs[key] = self._capture(y.clone(), z1.clone())
                if len(self.graphs) > self.max_graphs:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
            replay, static_y, static_z1, static_out = self.graphs[key]
            static_y.copy_(y)
            static_z1.copy_(z1)
            replay()
            return static_out.clone()

    def _capture(self, static_y, static_z1):
        if static_y.device.type != "cuda":
            static_out = self.fn(static_y, static_z1)
            return (lambda: static_out.copy_(self.fn(static_y, static_z1))), static_y, static_z1, static_out
        side = torch.cuda.Stream(device=static_y.device)
        side.wait_stream(torch.cuda.current_stream(static_y.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_y, static_z1)
        torch.cuda.current_stream(static_y.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_y, static_z1)
        return graph.replay, static_y, static_z1, static_out


def graphed_latent(resolver, max_graphs=4):
    """The resolver's latent solve (y, z1) -> (z, nfe) replayed from captured graphs; a callback is
    called once per step after the replay (the captured steps cannot call the host)."""
    if resolver.solver == "dopri5":
        raise ValueError("a captured solve needs a fixed-step solver; dopri5 chooses its steps at run time")
    graphed = GraphedSolve(lambda y, z1: resolver.latent(y, z1)[0], max_graphs)
    nfe = resolver.steps * EVALS_PER_STEP[resolver.solver]

    def latent(y, z1, callback=None):
        z = graphed(y, z1)
        for _ in range(resolver.steps if callback else 0):
            callback()
        return z, nfe

    return latent
