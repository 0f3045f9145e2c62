"""Ahead-of-time compile check: every Triton kernel variant the dispatchers launch, built to cubin.

    python -m ecdp.kernels.aot_check [--arch 90,80] [--json report.json]

No GPU or driver is needed. The launches come from the real code: the fast engine's fused
fixed-step solve (``ecdp.engine.FastResolver``: encoder, block conditioning, the denoiser's GroupNorm
+ SiLU at every call site, the ODE update of every stage) runs on meta tensors with the kernels
recorded instead of run (``ecdp.kernels.launches``). The subset, chosen to cover every distinct
variant while compiling in about a minute on 2 cores:

- networks: the paper preset at LR 64 -> HR 256 and the tiny preset (the built-in model's) at
  64 -> 256 and 256 -> 1024; batch 1 and 8; fp32, bf16 and fp16 (the network cast to the dtype
  with GroupNorm parameters kept fp32, the dtypes autocast gives on a GPU, the ODE state fp32);
  NCHW and channels_last;
- solvers: one Euler step on the paper preset (its GroupNorm sites); Euler, Heun and RK4 (1 step)
  and DPM-Solver++(2M) (3 steps: first and second order) on the tiny preset, so every stage kind
  of every fixed-step solver at HR 256 and 1024 (the ODE update sees only the HR state and heads);
- offsets past int32: the paper preset at LR 1024 -> HR 4096, batch 1, untiled (NCHW bf16 and
  channels_last fp32, one Euler step), whose largest GroupNorm input holds 3.2e9 elements;
- the slab GroupNorm (``triton_gn_nhwc``, which no dispatcher uses by default) at every site of the
  paper preset, channels_last, batch 1 and 8, each dtype, and at LR 1024 (bf16, offsets past int32).

Meta convolutions return the layout cuDNN gives (``launches.CudnnLayouts``), so the channels_last
cases launch the kernels' NHWC variants; the check fails when none is recorded. Every launch is
checked for a grid over CUDA's limits and for offsets past int32 that its variant
computes in 32 bits. The launches are then deduplicated by Triton's own specialization key (the
kernel, its constexprs, argument types, and the integer and pointer specializations: equal to 1,
divisible by 16) and each distinct variant is compiled for every target (sm_90 and sm_80 by
default) through a stand-in driver. Registers, stack and spills come from ptxas's verbose log,
shared memory from Triton's metadata. Exit status 1 on a compile error, a spill, shared memory
over the target's per-block limit, or a launch problem; the report lists every variant.
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

SHARED_LIMIT = {90: 232448, 80: 166912}   # bytes of shared memory one block may use (opt-in maximum)
DTYPES = ("fp32", "bf16", "fp16")
NETWORKS = [("paper", 64), ("tiny", 64), ("tiny", 256)]
BATCHES = (1, 8)
SOLVERS = [("euler", 1), ("heun", 1), ("rk4", 1), ("dpmpp2m", 3)]
LARGE = [("paper", 1024, 1, "bf16", False), ("paper", 1024, 1, "fp32", True)]
SLAB_GN = [("paper", 64, batch, dtype) for batch in BATCHES for dtype in DTYPES] + [("paper", 1024, 1, "bf16")]


@dataclass(frozen=True)
class Case:
    """One solve whose launches are recorded."""

    preset: str
    lr: int
    batch: int
    dtype: str
    channels_last: bool
    solver: str
    steps: int
    slab_gn: bool = False   # every GroupNorm on triton_gn_nhwc (not a dispatcher's default)

    def __str__(self):
        layout = "nhwc" if self.channels_last else "nchw"
        gn = " slab-gn" if self.slab_gn else ""
        return f"{self.preset} {self.lr}px b{self.batch} {self.dtype} {layout} {self.solver}x{self.steps}{gn}"


def cases():
    """The solves of the module docstring."""
    found = [Case(preset, lr, batch, dtype, channels_last, solver, steps)
             for preset, lr in NETWORKS for batch in BATCHES for dtype in DTYPES
             for channels_last in (False, True)
             for solver, steps in (SOLVERS if preset == "tiny" else SOLVERS[:1])]
    found += [Case(preset, lr, batch, dtype, channels_last, "euler", 1)
              for preset, lr, batch, dtype, channels_last in LARGE]
    found += [Case(preset, lr, batch, dtype, True, "euler", 1, slab_gn=True) for preset, lr, batch, dtype in SLAB_GN]
    return found


def _meta_resolver(case):
    """The fast engine's resolver for `case` on the meta device: weights cast once, the Triton
    GroupNorm + SiLU and the fused ODE updates."""
    from ecdp.modelfile import ModelConfig
    from ecdp.nets import PRESETS, build
    from ecdp.pipeline import SuperResolver
    from ecdp.sampling import SamplerSpec
    from ecdp.speed import Speed

    with torch.device("meta"):
        net = build(case.preset).eval()
    speed = Speed(precision=case.dtype, encoder_precision=case.dtype, channels_last=case.channels_last,
                  norm_kernel="triton", fused_ode=True)
    return SuperResolver(net, ModelConfig(net=PRESETS[case.preset]), SamplerSpec(case.solver, case.steps), speed)


def record(case):
    """The Launches of one solve of `case`."""
    from ecdp import nets
    from ecdp.kernels import triton_gn_nhwc
    from ecdp.kernels.launches import recording

    resolver = _meta_resolver(case)
    y = torch.empty(case.batch, 3, case.lr, case.lr, device="meta")
    z1 = torch.empty(resolver.noise_shape(y), device="meta")
    if case.slab_gn:
        for module in resolver.net.modules():
            if isinstance(module, nets.GroupNormSiLU):
                module.impl = triton_gn_nhwc.launch
    with recording() as launches, torch.inference_mode():
        resolver.run(y, z1, mu=torch.empty_like(z1))
    return launches


class StandInDriver:
    """Enough of a Triton driver to compile without a GPU: device i compiles for targets[i]."""

    def __init__(self, targets):
        self.targets, self.device = targets, 0

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.targets[self.device]


def ptxas_figures(log):
    """{registers, stack, spill_stores, spill_loads} from ptxas's verbose log (None when absent)."""
    figures = dict(registers=None, stack=None, spill_stores=None, spill_loads=None)
    if m := re.search(r"Used (\d+) registers", log):
        figures["registers"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log):
        figures["stack"], figures["spill_stores"], figures["spill_loads"] = map(int, m.groups())
    return figures


def compile_variants(launches, archs):
    """Compile every distinct variant of `launches` for each arch; one result dict per variant.

    Makes the stand-in driver Triton's active driver for the rest of the process.
    """
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    stand_in = StandInDriver([GPUTarget("cuda", arch, 32) for arch in archs])
    driver.set_active(stand_in)
    knobs.nvidia.dump_ptxas_log = True
    results = []
    for device, arch in enumerate(archs):
        stand_in.device = device
        seen = {}
        for label, launch in launches:
            log = io.StringIO()
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(log):
                    compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.options)
            except Exception as error:   # a compile error is a finding, reported with the variant
                results.append(_variant(arch, launch, label, error=f"{type(error).__name__}: {error}"))
                continue
            if id(compiled) in seen:
                seen[id(compiled)]["launches"] += 1
                continue
            result = _variant(arch, launch, label, **ptxas_figures(log.getvalue()),
                              shared=compiled.metadata.shared, seconds=time.perf_counter() - start)
            seen[id(compiled)] = result
            results.append(result)
    return results


def _variant(arch, launch, label, **figures):
    constexprs = {k: v for k, v in launch.options.items() if k != "num_warps"}
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in launch.args if isinstance(t, torch.Tensor)})
    return dict(arch=arch, kernel=launch.name, constexprs=constexprs, num_warps=launch.options.get("num_warps"),
                tensor_dtypes=dtypes, nhwc=launch.channels_inner, first_case=label, launches=1, **figures)


def findings(variant):
    """What fails the check in one compiled variant."""
    if variant.get("error"):
        return [variant["error"]]
    found = []
    if variant["spill_stores"] is None:
        found.append("no ptxas figures in the log")
    elif variant["spill_stores"] or variant["spill_loads"]:
        found.append(f"spills {variant['spill_stores']} bytes (stores), {variant['spill_loads']} (loads)")
    if variant["shared"] > SHARED_LIMIT.get(variant["arch"], SHARED_LIMIT[80]):
        found.append(f"{variant['shared']} bytes of shared memory exceed sm_{variant['arch']}'s limit")
    return found


def run(archs):
    """(report dict, failure lines): record every case, check its launches, compile the variants."""
    start = time.perf_counter()
    launches, failures = [], []
    for case in cases():
        for launch in record(case):
            failures += [f"{case}: {launch.name}: {problem}" for problem in launch.problems()]
            launches.append((str(case), launch))
    recorded = time.perf_counter() - start
    variants = compile_variants(launches, archs)
    if not any(v["nhwc"] for v in variants):
        failures.append("no channels_last (NHWC) variant recorded: the channels_last cases reached the kernels in NCHW")
    for v in variants:
        failures += [f"sm_{v['arch']} {v['kernel']} {v['constexprs']} ({v['first_case']}): {problem}"
                     for problem in findings(v)]
    report = dict(archs=archs, cases=len(cases()), launches=len(launches), variants=variants,
                  record_seconds=recorded, total_seconds=time.perf_counter() - start, failures=failures)
    return report, failures


def summary(report):
    nhwc = sum(v["nhwc"] for v in report["variants"])
    lines = [f"{report['cases']} solves, {report['launches']} launches recorded in "
             f"{report['record_seconds']:.1f} s; {len(report['variants'])} variants compiled in "
             f"{report['total_seconds'] - report['record_seconds']:.1f} s, {nhwc} of them NHWC (channels_last)"]
    lines.append("arch | kernel | layout | warps | constexprs | tensors | regs | stack | spills | shared | launches")
    for v in report["variants"]:
        constexprs = ",".join(f"{k}={int(x) if isinstance(x, bool) else x}" for k, x in v["constexprs"].items())
        layout = "nhwc" if v["nhwc"] else "nchw"
        lines.append(f"sm_{v['arch']} | {v['kernel']} | {layout} | {v['num_warps']} | {constexprs} | "
                     f"{'/'.join(v['tensor_dtypes'])} | {v.get('registers')} | {v.get('stack')} | "
                     f"{v.get('spill_stores')}/{v.get('spill_loads')} | {v.get('shared')} | {v['launches']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90,80", help="comma-separated compute capabilities (default 90,80)")
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"):
        print("TRITON_INTERPRET is set: the compile check needs Triton in compiled mode.", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache   # compile every variant afresh: ptxas logs only then
        report, failures = run([int(a) for a in args.arch.split(",")])
    print(summary(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if failures:
        print(f"\n{len(failures)} problem(s):\n" + "\n".join(failures), file=sys.stderr)
        return 1
    print("\nall variants compile without spills, within shared memory and int32 offsets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
