"""The Triton kernels' launches recorded instead of run: the launchers' own code over meta tensors.

``with recording() as launches:`` sends every dispatcher call (``ecdp.kernels.group_norm_silu``,
``ode_update``) to the Triton launchers for meta tensors too, and puts a recorder in place of each
kernel: ``launches`` gets one ``Launch`` per kernel launch (grid, arguments, options), and the
launchers' outputs stay unwritten. So any code (a whole network evaluation, a solve) can be run
on the meta device to see exactly which kernel variants it launches, with no GPU. Used by the
ahead-of-time compile check (``ecdp.kernels.aot_check``) and by the capture-safety test.
Needs Triton in compiled mode (not under TRITON_INTERPRET=1).

Inside ``recording()`` meta convolutions also return the layout cuDNN gives (``CudnnLayouts``):
PyTorch's meta convolution is always NCHW, so without it a channels_last network would reach the
kernels in NCHW and its channels_last variants would never be recorded.
"""
import contextlib
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ecdp.kernels as kernels
from ecdp.kernels.layout import INT32_MAX, full_extent, sample_extent

# The kernels each launcher module launches (module name -> kernel names).
KERNELS = {"triton_gn": ("_gn_fused", "_gn_stats", "_gn_finalize", "_gn_apply"),
           "triton_ode": ("_ode_update",), "triton_gn_nhwc": ("_gnh_stats", "_gnh_apply")}
GRID_MAX = (2**31 - 1, 65535, 65535)   # CUDA's limits on grid axes x, y, z


@dataclass
class Launch:
    """One kernel launch: kernel[grid](*args, **options)."""

    kernel: object
    grid: tuple
    args: tuple
    options: dict

    @property
    def name(self):
        return self.kernel.fn.__name__

    @property
    def channels_inner(self):
        """Whether the image the launch reads (its first argument) keeps channels innermost (NHWC)."""
        x = self.args[0] if self.args else None
        return isinstance(x, torch.Tensor) and x.dim() >= 3 and x.shape[1] > 1 and x.stride(1) == 1

    def problems(self):
        """What would go wrong on a GPU: a grid over CUDA's limits, or addressing past int32.

        The kernels add the batch offset in 64 bits and the rest of an image tensor's offset
        (channel and spatial) in 32 bits unless the variant has OFFSET64; other tensors (statistics,
        coefficients, parameters) are addressed in 32 bits throughout.
        """
        found = [f"grid axis {axis} of {size} programs exceeds CUDA's {limit}"
                 for axis, (size, limit) in enumerate(zip(self.grid, GRID_MAX)) if size > limit]
        if not self.options.get("OFFSET64", False):
            extents = [sample_extent(t) if t.dim() >= 3 else full_extent(t)
                       for t in self.args if isinstance(t, torch.Tensor)]
            if max(extents, default=0) > INT32_MAX:
                found.append(f"an offset of {max(extents)} elements overflows int32 (OFFSET64 is off)")
        return found


_CONVOLUTIONS = (torch.ops.aten.conv2d, torch.ops.aten.convolution, torch.ops.aten._convolution)


def _channels_last(t):
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class CudnnLayouts(TorchDispatchMode):
    """Meta convolutions in the memory format cuDNN picks: channels_last when the input or the weight
    is channels_last (else NCHW, which the meta kernel already gives)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        convolution = func.overloadpacket in _CONVOLUTIONS and out.is_meta
        if convolution and (_channels_last(args[0]) or _channels_last(args[1])):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


class _Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.launches.append(Launch(self.kernel, tuple(grid), args, options))
        return launch


@contextlib.contextmanager
def recording():
    """Record the Triton launches of the code run inside, which may use meta tensors (see above)."""
    modules = kernels._triton()
    if modules is None:
        raise RuntimeError("Triton does not import: there are no Triton launches to record")
    launches, saved = [], []
    use_triton = kernels._use_triton
    try:
        kernels._use_triton = lambda t: t.is_meta or use_triton(t)
        for module in modules:
            for name in KERNELS[module.__name__.rsplit(".", 1)[1]]:
                kernel = getattr(module, name)
                saved.append((module, name, kernel))
                setattr(module, name, _Recorder(kernel, launches))
        with CudnnLayouts():
            yield launches
    finally:
        kernels._use_triton = use_triton
        for module, name, kernel in saved:
            setattr(module, name, kernel)
