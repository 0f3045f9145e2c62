"""Peak memory of the quality-loss gradient: discrete adjoint against direct backpropagation.

    python bench/adjoint_memory.py [--steps 4,8,16,32] [--solver heun] [--size 64] [--batch 1] [--json]

Each configuration runs in a fresh Python process on one thread: tiny preset (random weights),
float32, pixel feature map, HR size x size at scale 4. Its number is the peak resident set size
during the loss and its backward minus the resident set size just before the loss (the peak is
reset first through /proc/self/clear_refs, so this is Linux only). glibc's mmap threshold is pinned
(MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the system at once and the resident set
follows the live tensors rather than the allocator's cache. The encoder runs before the baseline,
so both paths measure the solve and its gradient alone. Prints a markdown table, or one
JSON object {"adjoint": {steps: MB}, "direct": {steps: MB}} with --json.
"""
import argparse
import json
import os
import subprocess
import sys

MODES = ("adjoint", "direct")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="4,8,16,32", help="comma-separated numbers of solver steps")
    parser.add_argument("--solver", default="heun", choices=("euler", "heun", "rk4", "dpmpp2m"))
    parser.add_argument("--size", type=int, default=64, help="HR height and width (a multiple of 4)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    return args


def _rss_mb(field):
    """VmRSS or VmHWM of this process in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(mode, steps, solver, size, batch):
    """MB of peak memory above the baseline for one loss and backward, in this process."""
    import torch
    from ecdp.features import feature_map
    from ecdp.losses import quality_loss
    from ecdp.nets import build
    from ecdp.sampling import SamplerSpec
    from ecdp.resize import downscale, upscale

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build("tiny")
    x = torch.rand(batch, 3, size, size)
    y = downscale(x, 4)
    mu, cond = upscale(y, 4), net.encode(y, x.shape[-2:])
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_mb("VmRSS")
    loss = quality_loss(net, y, x, mu, 0.1, cond, feature_map("pixel"), sampler=SamplerSpec(solver=solver, steps=steps),
                        adjoint=mode == "adjoint", generator=torch.Generator().manual_seed(0))
    loss.backward()
    return _rss_mb("VmHWM") - before


def measure_in_subprocess(mode, steps, args):
    """measure() in a fresh Python process."""
    command = [sys.executable, __file__, "--one", mode, str(steps), "--solver", args.solver,
               "--size", str(args.size), "--batch", str(args.batch)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    return float(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(measure(args.one[0], int(args.one[1]), args.solver, args.size, args.batch))
        return
    peaks = {mode: {steps: measure_in_subprocess(mode, steps, args) for steps in args.steps} for mode in MODES}
    if args.json:
        print(json.dumps(peaks))
        return
    print(f"quality-loss gradient, tiny preset, {args.solver}, HR {args.size}x{args.size}, batch {args.batch}: "
          "peak MB above the baseline")
    print("| steps | adjoint | direct |\n| ---: | ---: | ---: |")
    for steps in args.steps:
        print(f"| {steps} | {peaks['adjoint'][steps]:.1f} | {peaks['direct'][steps]:.1f} |")


if __name__ == "__main__":
    main()
