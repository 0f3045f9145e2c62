"""Parity and speed of the fused kernels on a CUDA GPU, at the paper model's shapes.

    python bench/gpu_kernels.py --out results.json

GroupNorm + SiLU (at the residual block's second site: x + time projection + conditioning), in
the layouts asked for (default: channels_last, the engine's on CUDA): the Triton kernel and, on
CUDA, the slab kernels (``ecdp::group_norm_silu_nhwc``, ecdp.kernels.triton_gn_nhwc) against the
exact reference at both sites of a residual block, then timed against eager ``F.group_norm`` +
``F.silu`` (same adds, input dtype), ``torch.compile`` of that eager function, and the project's
reference (fp32 statistics through an fp32 copy, what the network runs with kernels off). Each row
names the fastest of what the engine can put at that site: eager ("pick_eager": the Triton kernel,
the slab kernels or the reference) and under torch.compile ("pick_compile": the slab operator or
Inductor's fusion). Throughput in GB/s counts the bytes read once (x, add, add_channel) and written
once (the output), and is also given as a fraction of a device-to-device copy of x measured in the
same run. Tensors under the L2 size partly stay in cache, for the copy as for the kernels.

Every time on CUDA is GPU time: a batch of calls captured in a CUDA graph and replayed, as the engine
replays its solves, so the host's launch cost is not in it (a call that cannot be captured is timed
on the stream instead, and its row says so).

ODE update: the fused kernel against the eager sequence (ecdp.kernels.reference.ode_update) and its
``torch.compile``, for Euler, an RK4 middle stage and DPM-Solver++(2M), state (B, 3, 256, 256), also
as a fraction of the copy bandwidth.

Prints markdown tables and writes the JSON (atomically) to --out. ``bench/gpu/run.sh`` calls
``bench_group_norm`` and ``bench_ode`` too; with ``quick`` (CPU, tiny shapes) the same code runs
through the dispatcher's PyTorch fallback and is timed with the host clock.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

GN_SHAPES = [(64, 256, 256), (128, 128, 128), (256, 64, 64), (256, 32, 32)]  # (C, H, W)
ODE_SIZE = 256     # the ODE state is (B, 3, ODE_SIZE, ODE_SIZE)
QUICK_GN_SHAPES = [(16, 8, 8)]
QUICK_ODE_SIZE = 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}   # fp32: max abs diff; bf16: relative to the max


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated subset of bf16,fp32")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--layouts", default="nhwc", help="comma-separated subset of nhwc,nchw (GroupNorm inputs)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions (the median is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on any device (a rehearsal)")
    args = parser.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype(s) {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    args.layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    if set(args.layouts) - set(LAYOUTS):
        parser.error(f"unknown layout(s) in {','.join(args.layouts)}; choose from {', '.join(LAYOUTS)}")
    return args


def check_environment(quick=False):
    """None when the benchmark can run, else the one sentence that says why not."""
    if quick:
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine: bench/gpu_kernels.py needs a CUDA GPU."
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: unset it to time the compiled Triton kernels."
    import ecdp.kernels
    if not ecdp.kernels.triton_available():
        return "Triton does not import: install it (pip install triton) to run bench/gpu_kernels.py."
    return None


def cuda_time_ms(fn, warmup, reps, graph=False):
    """Median time of one call, in ms. On CUDA each repetition times a batch of calls between CUDA
    events; with `graph`, that batch is captured once in a CUDA graph and replayed (GPU time without
    the host's launch cost), or, where fn cannot be captured, called as it is. On the CPU: host
    clock, one call per repetition."""
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    inner = max(1, min(100, int(2.0 / max(start.elapsed_time(end), 1e-3))))   # about 2 ms per rep
    batch = (_captured(fn, inner) if graph else None) or (lambda: [fn() for _ in range(inner)])
    times = []
    for _ in range(reps):
        start.record()
        batch()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _captured(fn, calls):
    """The replay of a CUDA graph of `calls` calls of fn, or None (with a line on stderr) when fn
    cannot be captured."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            fn()   # on the capture stream once, so that lazy set-up happens outside the capture
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(calls):
                    fn()
    except RuntimeError as e:
        torch.cuda.synchronize()
        print(f"timed without a CUDA graph ({str(e).splitlines()[0]})", file=sys.stderr)
        return None
    torch.cuda.current_stream().wait_stream(stream)
    return graph.replay


def eager_gn(x, weight, bias, groups, add_channel, add):
    return F.silu(F.group_norm(x + add_channel[:, :, None, None] + add, groups, weight, bias, 1e-5))


def max_error(got, expected, dtype_name, relative=False):
    """(error, passed): max abs diff for fp32 (unless relative), relative to the reference's max for bf16."""
    diff = (got.double() - expected.double()).abs().max().item()
    if dtype_name == "fp32" and not relative:
        return diff, diff <= TOLERANCE["fp32"]
    rel = diff / max(expected.double().abs().max().item(), 1e-30)
    return rel, rel <= TOLERANCE[dtype_name]


def bench_group_norm(args, triton_gn, reference):
    results = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for batch in args.batches:
            for C, H, W in (QUICK_GN_SHAPES if args.quick else GN_SHAPES):
                for layout in args.layouts:
                    results.append(_bench_gn_case(args, triton_gn, reference, dtype_name, dtype,
                                                  batch, C, H, W, LAYOUTS[layout]))
    return results


def _fastest(row, names):
    """The name among `names` with the smallest time in row (names not timed are left out)."""
    timed = [name for name in names if f"{name}_us" in row]
    return min(timed, key=lambda name: row[f"{name}_us"]) if timed else None


def _bench_gn_case(args, triton_gn, reference, dtype_name, dtype, batch, C, H, W, layout):
    groups = min(C // 4, 32)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(batch, C, H, W, device=DEVICE, generator=gen).to(dtype).contiguous(memory_format=layout)
    add = torch.randn(batch, C, H, W, device=DEVICE, generator=gen).to(dtype).contiguous(memory_format=layout)
    add_channel = torch.randn(batch, C, device=DEVICE, generator=gen).to(dtype)
    weight = 1 + 0.1 * torch.randn(C, device=DEVICE, generator=gen)
    bias = 0.1 * torch.randn(C, device=DEVICE, generator=gen)
    weight_d, bias_d = weight.to(dtype), bias.to(dtype)

    row = dict(dtype=dtype_name, batch=batch, channels=C, height=H, width=W, groups=groups,
               layout="nhwc" if layout == torch.channels_last else "nchw")
    slab = None
    if DEVICE == "cuda":   # the slab kernels have no CPU fallback
        from ecdp.kernels.triton_gn_nhwc import group_norm_silu as slab
    # parity at both sites of a residual block: plain x, and x + add_channel + add
    for site, adds in (("plain", {}), ("adds", dict(add_channel=add_channel, add=add))):
        out = torch.full_like(x, float("nan"))
        got = triton_gn.group_norm_silu(x, weight, bias, groups, out=out, **adds)
        expected = reference.group_norm_silu(x, weight, bias, groups, **adds)
        error, passed = max_error(got, expected, dtype_name)
        row[f"error_{site}"], row[f"pass_{site}"] = error, passed and not torch.isnan(got).any().item()
        if slab is not None:
            error, passed = max_error(slab(x, weight, bias, groups, adds.get("add_channel"), adds.get("add")),
                                      expected, dtype_name)
            row[f"error_slab_{site}"], row[f"pass_slab_{site}"] = error, passed

    elem = x.element_size()
    nbytes = (2 * x.numel() + add.numel() + add_channel.numel()) * elem
    dst = torch.empty_like(x)
    copy_ms = cuda_time_ms(lambda: dst.copy_(x), args.warmup, args.reps)
    copy_gbs = 2 * x.numel() * elem / copy_ms / 1e6
    out = torch.empty_like(x)
    candidates = {
        "triton": lambda: triton_gn.group_norm_silu(x, weight, bias, groups, add_channel=add_channel,
                                                    add=add, out=out),
        "eager": lambda: eager_gn(x, weight_d, bias_d, groups, add_channel, add),
        "reference": lambda: reference.group_norm_silu(x, weight, bias, groups, add_channel=add_channel, add=add),
    }
    if not args.no_compile:
        compiled = torch.compile(eager_gn, dynamic=False)
        candidates["compile"] = lambda: compiled(x, weight_d, bias_d, groups, add_channel, add)
    if slab is not None:
        candidates["slab"] = lambda: slab(x, weight, bias, groups, add_channel, add)
    row["copy_gbs"] = copy_gbs
    for name, fn in candidates.items():
        ms = cuda_time_ms(fn, args.warmup, args.reps, graph=True)
        row[f"{name}_us"] = 1e3 * ms
        row[f"{name}_gbs"] = nbytes / ms / 1e6
        row[f"{name}_of_copy"] = row[f"{name}_gbs"] / copy_gbs
    row["pick_eager"] = _fastest(row, ["triton", "slab", "reference"])
    row["pick_compile"] = _fastest(row, ["slab", "compile"]) if not args.no_compile else None
    if not args.no_compile:
        torch._dynamo.reset()
    return row


GN_COLUMNS = ["dtype", "batch", "channels", "height", "layout", "pass_plain", "pass_adds", "pass_slab_plain",
              "pass_slab_adds", "copy_gbs", "triton_us", "triton_of_copy", "slab_us", "slab_of_copy", "eager_us",
              "eager_of_copy", "compile_us", "compile_of_copy", "reference_us", "pick_eager", "pick_compile"]
"""The GroupNorm table's columns, here and in the device report."""


def gn_passed(row):
    """Whether every kernel of a GroupNorm row matched the reference (the slab kernels where they ran)."""
    return all(row[key] for key in ("pass_plain", "pass_adds", "pass_slab_plain", "pass_slab_adds") if key in row)


def bench_ode(args, kernels, triton_ode, reference):
    results = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for batch in args.batches:
            gen = torch.Generator(device=DEVICE).manual_seed(0)
            size = QUICK_ODE_SIZE if args.quick else ODE_SIZE
            shape = (batch, 3, size, size)
            head = torch.randn(batch, 6, size, size, device=DEVICE, generator=gen).to(dtype)
            eps_hat, z0_hat = head[:, :3], head[:, 3:]
            z, base, acc = (torch.randn(shape, device=DEVICE, generator=gen).to(dtype) for _ in range(3))
            t = torch.linspace(0.9, 0.5, batch, device=DEVICE, dtype=torch.float64)
            s = t - 0.05
            uses = {
                "euler": (kernels.euler_coef(t, s), dict()),
                "rk4_stage2": (kernels.rk_coefs(t, s, "rk4")[1][1], dict(base=base, acc=acc, write_acc=True)),
                "dpmpp2m": (kernels.dpmpp2m_coef(t, s, t + 0.05), dict(acc=acc, write_acc=True)),
            }
            for use, (coef, kw) in uses.items():
                got = triton_ode.ode_update(z, eps_hat, z0_hat, coef, **kw)
                expected = reference.ode_update(z, eps_hat, z0_hat, coef, **kw)
                errors = [max_error(g, e, dtype_name, relative=True)
                          for g, e in zip(got, expected) if e is not None]
                n_in = 3 + (kw.get("base") is not None) + (kw.get("acc") is not None)
                n_out = 1 + bool(kw.get("write_acc"))
                nbytes = (n_in + n_out) * z.numel() * z.element_size()
                row = dict(use=use, dtype=dtype_name, batch=batch, error=max(e for e, _ in errors),
                           passed=all(p for _, p in errors))
                dst = torch.empty_like(z)
                copy_ms = cuda_time_ms(lambda: dst.copy_(z), args.warmup, args.reps)
                row["copy_gbs"] = 2 * z.numel() * z.element_size() / copy_ms / 1e6
                candidates = {
                    "fused": lambda: triton_ode.ode_update(z, eps_hat, z0_hat, coef, **kw),
                    "eager": lambda: reference.ode_update(z, eps_hat, z0_hat, coef, **kw),
                }
                if not args.no_compile:
                    compiled = torch.compile(reference.ode_update, dynamic=False)
                    candidates["compile"] = lambda: compiled(z, eps_hat, z0_hat, coef, **kw)
                for name, fn in candidates.items():
                    ms = cuda_time_ms(fn, args.warmup, args.reps, graph=True)
                    row[f"{name}_us"] = 1e3 * ms
                    row[f"{name}_gbs"] = nbytes / ms / 1e6
                    row[f"{name}_of_copy"] = row[f"{name}_gbs"] / row["copy_gbs"]
                results.append(row)
                if not args.no_compile:
                    torch._dynamo.reset()
    return results


def markdown(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for col in columns:
            v = row.get(col)
            v = "" if v is None else v
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomic(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    problem = check_environment()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    import triton

    import ecdp.kernels as kernels
    from ecdp.kernels import reference, triton_gn, triton_ode

    gn = bench_group_norm(args, triton_gn, reference)
    ode = bench_ode(args, kernels, triton_ode, reference)
    gn_cols = GN_COLUMNS
    ode_cols = ["use", "dtype", "batch", "passed", "error", "fused_us", "fused_gbs", "eager_us", "compile_us"]
    print(f"## GroupNorm + SiLU ({torch.cuda.get_device_name()})\n")
    print(markdown(gn, [c for c in gn_cols if not (args.no_compile and c.startswith("compile"))]))
    print("\n## ODE update\n")
    print(markdown(ode, [c for c in ode_cols if not (args.no_compile and c.startswith("compile"))]))
    write_json_atomic(args.out, dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                     triton=triton.__version__, group_norm_silu=gn, ode_update=ode))
    failed = [r for r in gn if not gn_passed(r)] + [r for r in ode if not r["passed"]]
    if failed:
        print(f"\n{len(failed)} parity check(s) failed; see {args.out}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
