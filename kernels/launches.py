"""The Triton kernels' launches recorded instead of run: the launchers' own code over meta tensors.

``with recording() as launches:`` sends every dispatcher call (``ecdp.kernels.group_norm_silu``,
``ode_update``) to the Triton launchers for meta tensors too, and puts a recorder in place of each
kernel: ``launches`` gets one ``Launch`` per kernel launch (grid, arguments, options), and the
launchers' outputs stay unwritten. So any code (a whole network evaluation, a solve) can be run
on the meta device to see exactly which kernel variants it launches, with no GPU. Used by the
ahead-of-time compile check (``ecdp.kernels.aot_check``) and by the capture-safety test.
Needs Triton in compiled mode (not under TRITON_INTERPRET=1).
"""
import contextlib
from dataclasses import dataclass

import torch

import ecdp.kernels as kernels
from ecdp.kernels.layout import INT32_MAX, full_extent, sample_extent

# The kernels each launcher module launches (module name -> kernel names).
KERNELS = {"triton_gn": ("_gn_fused", "_gn_stats", "_gn_finalize", "_gn_apply"),
           "triton_ode": ("_ode_update",)}
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
        yield launches
    finally:
        kernels._use_triton = use_triton
        for module, name, kernel in saved:
            setattr(module, name, kernel)
