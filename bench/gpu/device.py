"""The device command's body: correctness, kernels and end to end on one GPU, one report.

    bash bench/gpu/run.sh OUT [--quick]      (sets up the import path, then runs this module)

Sections, each in a time budget (the whole run stays under 8 minutes; a part that would not fit
is recorded as skipped, never silently dropped), each failure recorded and the run continued:

1. correctness: the CUDA tests (``pytest tests/test_cuda.py tests/test_engine.py -k cuda``: capture
   and replay of every fixed-step solver, bf16 parity, threads, Triton against the reference at
   the paper model's GroupNorm sites), JUnit XML in OUT/pytest.xml;
2. kernels: ``bench/gpu_kernels.py``'s GroupNorm + SiLU (the Triton kernel, the slab kernels,
   eager, torch.compile, the project's reference; GPU time under a CUDA graph, GB/s and fraction
   of a copy measured in the same run, the fastest per site) at the paper model's levels, bf16,
   channels_last (the engine's layout on CUDA), batch 1 and 8, and its ODE update (fp32 state, the
   engine's) likewise;
3. end to end, (y, z1) -> x, ms per image and peak memory: the paper preset (random weights) at
   64 -> 256 and the built-in model at 64 -> 256 and 256 -> 1024, batch 1 and 8; the reference
   (fp32 dopri5 at tol 1e-3 with its NFE, and Heun 3 on the log-SNR grid, TF32 off) and the fast
   engine (Heun 3 log-SNR) at the Speeds of FAST, each row naming its Speed: the fast engine's own
   (Speed.auto), without CUDA graphs, without the Triton kernels, with the slab GroupNorm kernels,
   with the fused ODE update, with torch.compile. PSNR of each fast output against the fp32 Heun 3 reference from the same noise.
   Then one network evaluation per image with the conditioning cached, replayed from a CUDA graph:
   the anchor, plain PyTorch done right on the same inputs (the plain network in bf16 and
   channels_last, torch.compile, CUDA graph), then the fast engine's network under torch.compile
   with Inductor's GroupNorm and with the slab operator, each with its ratio to the anchor.

--quick: the same code on the CPU at tiny sizes (the tiny preset in place of the paper preset,
LR 8), no torch.compile, in seconds; so the GPU run cannot fail on a typo.
"""
import argparse
import contextlib
import dataclasses
import json
import platform
import subprocess
import sys
import time
import traceback
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

BUDGET_S = 450                      # the sections' share of the 8 minutes (start-up and copies aside)
COMPILE_RESERVE_S = 90              # what one torch.compile of a network may take
GPU_CASES = [("paper", 64, 8), ("paper", 64, 1), ("default", 64, 1), ("default", 64, 8),
             ("default", 256, 1), ("default", 256, 8)]   # the acceptance cases first
QUICK_CASES = [("tiny", 8, 1), ("default", 8, 2)]
FAST = {   # name: the Speed of the row from the fast engine's own (Speed.auto on the device) and the device
    "fast engine": lambda auto, device: auto,
    "no CUDA graphs": lambda auto, device: dataclasses.replace(auto, cuda_graphs=False),
    "no Triton": lambda auto, device: dataclasses.replace(auto, norm_kernel=None),
    "slab norm": lambda auto, device: dataclasses.replace(auto, norm_kernel="slab"),
    "fused ODE update": lambda auto, device: dataclasses.replace(auto, fused_ode=True),
    "compile": lambda auto, device: dataclasses.replace(auto, compile_mode="default", norm_kernel=None),
}
SOLVER = dict(solver="heun", steps=3, grid="logsnr")   # a SamplerSpec


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def environment():
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["driver"] = subprocess.check_output(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True).strip()
    return info


# ------------------------------------------------------------------------------------------------
# 1. correctness

def correctness(out, quick):
    """The CUDA tests in a pytest subprocess; counts from its JUnit XML."""
    xml = out / "pytest.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
               "tests/test_engine.py", "-k", "cuda", f"--junitxml={xml}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    print(result.stdout[-3000:], result.stderr[-2000:], sep="\n")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return dict(**counts, failed=failed, returncode=result.returncode,
                passed=result.returncode == 0 and (quick or counts["skipped"] == 0))


# ------------------------------------------------------------------------------------------------
# 2. kernels

def _dispatcher_kernels():
    """The dispatcher in the launchers' place (the --quick run: PyTorch fallback on the CPU)."""
    import ecdp.kernels as kernels

    def group_norm_silu(x, weight, bias, groups, out=None, **adds):
        y = kernels.group_norm_silu(x, weight, bias, groups, **adds)
        return y if out is None else out.copy_(y)

    return types.SimpleNamespace(group_norm_silu=group_norm_silu), kernels


def kernel_section(quick):
    from bench import gpu_kernels
    from ecdp.kernels import reference

    if quick:
        gn, ode = _dispatcher_kernels()
    else:
        from ecdp.kernels import triton_gn as gn, triton_ode as ode
    import ecdp.kernels as kernels
    gn_args = argparse.Namespace(dtypes=["bf16"], batches=[1, 8], layouts=["nhwc"], no_compile=quick,
                                 warmup=2 if quick else 10, reps=2 if quick else 20, quick=quick)
    ode_args = argparse.Namespace(**{**vars(gn_args), "dtypes": ["fp32"]})
    return dict(group_norm_silu=gpu_kernels.bench_group_norm(gn_args, gn, reference),
                ode_update=gpu_kernels.bench_ode(ode_args, kernels, ode, reference))


# ------------------------------------------------------------------------------------------------
# 3. end to end

def _time(fn, warmup, reps):
    from bench.gpu_kernels import cuda_time_ms
    return cuda_time_ms(fn, warmup, reps)   # a solve that replays a CUDA graph is one already


def _psnr(a, b):
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _measure(run, batch, warmup, reps):
    """(x, ms per image, peak MB) of run() -> x."""
    from bench.harness import DEVICE, PeakMemory
    meter = PeakMemory(DEVICE)
    meter.reset()
    x = run()
    ms = _time(run, warmup, reps)
    return x, ms / batch, meter.peak_mb()


def end_to_end_case(model, lr, batch, quick, budget):
    """Rows for one (model, LR size, batch): the references, then each fast Speed."""
    from bench.harness import DEVICE, Case, inputs, load
    from ecdp.pipeline import SuperResolver
    from ecdp.sampling import SamplerSpec
    from ecdp.speed import Speed

    net, config, description = load(model)
    y, z1 = inputs(Case(model, lr, batch), config.scale)
    warmup, reps = (1, 1) if quick else (2, 5)
    rows = []
    base = dict(model=model, description=description, lr=lr, hr=lr * config.scale, batch=batch)
    with torch.inference_mode():
        dopri = SuperResolver(net, config, SamplerSpec(solver="dopri5", atol=1e-3, rtol=1e-3))
        nfe = {}

        def run_dopri():
            x, nfe["n"] = dopri.run(y, z1)
            return x

        _, ms, peak = _measure(run_dopri, batch, 0 if quick else 1, 1)
        rows.append(dict(base, config="reference fp32, dopri5 1e-3", nfe=nfe["n"], ms_per_image=ms, peak_mb=peak))
        heun = SuperResolver(net, config, SamplerSpec(**SOLVER))
        reference_x, ms, peak = _measure(lambda: heun(y, z1), batch, warmup, reps)
        rows.append(dict(base, config="reference fp32, heun 3 logsnr", nfe=6, ms_per_image=ms, peak_mb=peak))
        auto = Speed.auto(DEVICE, fixed_step=True)
        for name, variant in FAST.items():
            speed = variant(auto, DEVICE)
            row = dict(base, config=f"{name}: {speed.describe()}", nfe=6)
            if speed.compile_mode and quick:
                rows.append(dict(row, skipped="torch.compile is not run in --quick"))
                continue
            if speed.norm_kernel == "slab" and not z1.is_cuda:
                rows.append(dict(row, skipped="the slab kernels run on CUDA"))
                continue
            if budget.left() < (COMPILE_RESERVE_S if speed.compile_mode else 10):
                rows.append(dict(row, skipped=f"time budget ({budget.left():.0f} s left)"))
                continue
            resolver = SuperResolver(net, config, SamplerSpec(**SOLVER), speed)
            x, ms, peak = _measure(lambda: resolver(y, z1), batch, warmup, reps)
            rows.append(dict(row, ms_per_image=ms, ms_per_nfe_per_image=ms / 6, peak_mb=peak,
                             psnr_vs_reference=_psnr(x, reference_x)))
        if budget.left() > 2 * COMPILE_RESERVE_S or quick:
            rows += denoiser_rows(net, y, z1, base, auto, quick, budget)
    return rows


def _one_evaluation(denoiser, z1, cond, warmup, reps):
    """ms of one call denoiser(z, t, cond), replayed from a CUDA graph on a GPU (eager elsewhere)."""
    t = torch.full((z1.shape[0],), 0.5, device=z1.device)
    call = lambda: denoiser(z1, t, cond)
    if z1.is_cuda:
        from ecdp.acceleration import GraphedSolve
        graphed = GraphedSolve(lambda z, t: denoiser(z, t, cond)[0])
        call = lambda: graphed(z1, t)
    return _time(call, warmup, reps)


def denoiser_rows(net, y, z1, base, auto, quick, budget):
    """One network evaluation per image, conditioning cached: plain PyTorch done right (the anchor:
    the plain network in bf16 and channels_last, torch.compile, CUDA graph), then the fast engine's
    network as its Speed runs under torch.compile, with Inductor's GroupNorm and, on CUDA and in the
    time budget, with the slab operator; each with the anchor's time over its own. cuDNN's autotuner
    is on for all."""
    import copy

    from ecdp.acceleration import backends, prepare
    warmup, reps = (1, 1) if quick else (3, 20)
    batch, hr = z1.shape[0], z1.shape[-2:]
    anchor = copy.deepcopy(net).to(auto.dtype(), memory_format=torch.channels_last)
    anchor_denoiser = anchor.denoiser if quick else torch.compile(anchor.denoiser)
    compiled = auto if quick else dataclasses.replace(auto, compile_mode="default", norm_kernel=None)
    ours = [compiled] + ([dataclasses.replace(compiled, norm_kernel="slab")] if z1.is_cuda else [])
    prefix = "one NFE, cached conditioning: "
    with backends(auto):
        cond = anchor.encode(y.to(auto.dtype()).contiguous(memory_format=torch.channels_last), hr)
        z = z1.to(auto.dtype()).contiguous(memory_format=torch.channels_last)
        anchor_ms = _one_evaluation(anchor_denoiser, z, cond, warmup, reps) / batch
        rows = [dict(base, config=prefix + ("anchor (plain PyTorch, bf16, channels_last, compile, CUDA graph)"
                                            if not quick else "anchor (plain PyTorch, --quick: eager)"),
                     nfe=1, ms_per_image=anchor_ms)]
        for speed in ours:
            row = dict(base, config=prefix + speed.describe(), nfe=1)
            if speed is not compiled and budget.left() < COMPILE_RESERVE_S:
                rows.append(dict(row, skipped=f"time budget ({budget.left():.0f} s left)"))
                continue
            network = prepare(net, speed)
            ms = _one_evaluation(network.denoiser, z1, network.encode(y, hr), warmup, reps) / batch
            rows.append(dict(row, ms_per_image=ms, anchor_over_fast=anchor_ms / ms))
    return rows


def end_to_end(quick, budget):
    rows = []
    for model, lr, batch in QUICK_CASES if quick else GPU_CASES:
        if budget.left() < 15:
            rows.append(dict(model=model, lr=lr, batch=batch, skipped=f"time budget ({budget.left():.0f} s left)"))
            continue
        try:
            rows += end_to_end_case(model, lr, batch, quick, budget)
        except Exception:   # one case's failure is reported, the other cases still run
            rows.append(dict(model=model, lr=lr, batch=batch, error=traceback.format_exc(limit=4)))
        torch._dynamo.reset()
    return rows


# ------------------------------------------------------------------------------------------------
# the report

def markdown(report):
    from bench.gpu_kernels import GN_COLUMNS, markdown as table
    env = report["environment"]
    lines = [f"# Device report: {env.get('device')}", "",
             f"torch {env['torch']} (CUDA {env.get('cuda')}), Triton {env.get('triton')}, driver "
             f"{env.get('driver')}, Python {env['python']}; {report['seconds']:.0f} s"
             + (" (--quick)" if report["quick"] else ""), ""]
    for name, section in report["sections"].items():
        lines.append(f"## {name}\n")
        if "error" in section:
            lines += ["```", section["error"], "```", ""]
            continue
        value = section["value"]
        if name == "correctness":
            lines.append(table([value], ["passed", "tests", "failures", "errors", "skipped", "failed"]))
        elif name == "kernels":
            lines.append(table(value["group_norm_silu"], GN_COLUMNS))
            lines.append("")
            lines.append(table(value["ode_update"], ["use", "dtype", "batch", "passed", "error", "copy_gbs",
                                                     "fused_us", "fused_gbs", "fused_of_copy", "eager_us",
                                                     "compile_us", "compile_of_copy"]))
        else:
            lines.append(table(value, ["model", "lr", "hr", "batch", "config", "nfe", "ms_per_image",
                                       "ms_per_nfe_per_image", "peak_mb", "psnr_vs_reference", "anchor_over_fast",
                                       "skipped", "error"]))
        lines.append("")
    return "\n".join(lines)


def passed(report):
    sections = report["sections"]
    if any("error" in s for s in sections.values()):
        return False
    kernels = sections["kernels"]["value"]
    from bench.gpu_kernels import gn_passed
    return (sections["correctness"]["value"]["passed"]
            and all(gn_passed(r) for r in kernels["group_norm_silu"])
            and all(r["passed"] for r in kernels["ode_update"])
            and not any("error" in r for r in sections["end to end"]["value"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for report.json, report.md and pytest.xml")
    parser.add_argument("--quick", action="store_true", help="the rehearsal: CPU, tiny sizes, seconds")
    args = parser.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("no CUDA device: run with --quick for the CPU rehearsal", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    # fp32 rows mean fp32: PyTorch's default on Ampere and later rounds fp32 convolution operands to TF32.
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    start, budget = time.monotonic(), Budget(BUDGET_S)
    report = dict(quick=args.quick, environment=environment(), sections={})
    sections = [("correctness", lambda: correctness(args.out, args.quick)),
                ("kernels", lambda: kernel_section(args.quick)),
                ("end to end", lambda: end_to_end(args.quick, budget))]
    for name, section in sections:
        print(f"== {name} ({budget.left():.0f} s of the budget left)", flush=True)
        try:
            report["sections"][name] = dict(value=section())
        except Exception:
            report["sections"][name] = dict(error=traceback.format_exc(limit=6))
            print(report["sections"][name]["error"], file=sys.stderr)
    report["seconds"] = time.monotonic() - start
    report["passed"] = passed(report)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
