"""Sampler study: Y-PSNR, SSIM, LR-PSNR and seconds per image against NFE for every solver.

    python -m bench.sampler_study run --model default --data SET5 SET14 --device cuda --out study.json
    python -m bench.sampler_study report study.json --plot study.png    # markdown table; plot needs matplotlib

`--references`, `--min-nfe` and `--max-nfe` split a study into parts (run them side by side, or
one per time-limited job: `run --references --min-nfe 12 --max-nfe 24`); `report` merges them.

`run` scores the reference engine (eager fp32, seed 0) with dopri5 at tol 1e-3 and 1e-4, and with
Euler, Heun, RK4 and DPM-Solver++(2M) from 4 to 50 NFE on both time grids, writing the JSON after
every setting. `report` prints the table and names the default: the cheapest fixed-step setting
(fewest NFE, then fewest seconds) whose Y-PSNR on every set is within 0.05 dB of the best of dopri5
at 1e-4 and the fixed-step settings (see default_setting).
"""
import argparse
import json

from bench.quality import evaluate, load_sets, write_json
from ecdp.modelfile import load_model, resolve_model
from ecdp.sampling import EVALS_PER_STEP
from ecdp.choices import GRIDS
from ecdp.upscaler import Upscaler

REFERENCE_TOLS = (1e-3, 1e-4)
STEPS = {   # steps giving about 4, 6, 8, 12, 16, 24, 32 and 50 NFE
    "euler": (4, 6, 8, 12, 16, 24, 32, 50),
    "heun": (2, 3, 4, 6, 8, 12, 16, 25),
    "rk4": (1, 2, 3, 4, 6, 8, 12),
    "dpmpp2m": (4, 6, 8, 12, 16, 24, 32, 50),
}
MARGIN_DB = 0.05


def settings(references=REFERENCE_TOLS, min_nfe=0, max_nfe=50):
    """The settings as dicts of Upscaler options: dopri5 at each tolerance of `references` first, then
    the fixed-step solvers from min_nfe to max_nfe NFE, from the fewest up (a run cut short still
    covers the cheap end)."""
    dopri5 = [{"solver": "dopri5", "atol": tol, "rtol": tol} for tol in references]
    fixed = [{"solver": solver, "steps": n, "grid": grid}
             for solver, counts in STEPS.items() for n in counts for grid in GRIDS
             if min_nfe <= n * EVALS_PER_STEP[solver] <= max_nfe]
    return dopri5 + sorted(fixed, key=lambda s: s["steps"] * EVALS_PER_STEP[s["solver"]])


def label(setting):
    if setting["solver"] == "dopri5":
        return f"dopri5 tol {setting['atol']:g}"
    return f"{setting['solver']} {setting['steps']} ({setting['grid']})"


def run(args):
    net, config = load_model(resolve_model(args.model))
    sets = load_sets(args.data, config.scale, args.device)
    report = {"model": str(args.model), "device": args.device, "seed": args.seed, "rows": []}
    for setting in settings(args.references, args.min_nfe, args.max_nfe):
        upscaler = Upscaler.from_model(net, config, device=args.device, seed=args.seed, **setting)
        report["rows"].append({"setting": setting, "sets": evaluate(upscaler, sets, label(setting))})
        write_json(args.out, report)
        row = report["rows"][-1]["sets"]
        print(f"{label(setting):<26}" + "  ".join(
            f"{name} {m['ecdp']['psnr_y']:.2f} dB {m['nfe']:.1f} NFE {m['seconds']:.3f} s" for name, m in row.items()),
            flush=True)


def default_setting(rows, margin=MARGIN_DB):
    """The cheapest fixed-step row whose Y-PSNR on every set is within margin of the best of dopri5
    at 1e-4 and every fixed-step row (None without a dopri5 1e-4 row).

    Where Y-PSNR rises with NFE towards the exact flow, the best is dopri5 and this is "the cheapest
    setting within margin of dopri5 at 1e-4". A model fine-tuned through one discretization (the
    quality stage) can beat its own exact flow there; then the floor rises to that setting.
    """
    reference = next((r for r in rows if r["setting"] == {"solver": "dopri5", "atol": 1e-4, "rtol": 1e-4}), None)
    if reference is None:
        return None
    fixed = [r for r in rows if r["setting"]["solver"] != "dopri5"]
    floor = {name: max(r["sets"][name]["ecdp"]["psnr_y"] for r in [reference, *fixed]) - margin
             for name in reference["sets"]}
    good = [r for r in fixed if all(m["ecdp"]["psnr_y"] >= floor[name] for name, m in r["sets"].items())]
    return min(good, key=lambda r: (_mean(r, "nfe"), _mean(r, "seconds")), default=None)


def _mean(row, key):
    values = [m[key] for m in row["sets"].values()]
    return sum(values) / len(values)


def report(args):
    studies = [json.loads(open(path).read()) for path in args.json]
    if len({s["model"] for s in studies}) > 1:
        raise SystemExit("the JSON files are studies of different models")
    study, rows = studies[0], [row for s in studies for row in s["rows"]]
    names = list(rows[0]["sets"])
    print("| setting | NFE | " + " | ".join(f"{n} PSNR-Y | {n} SSIM-Y | {n} LR-PSNR | {n} s/img" for n in names) + " |")
    print("|---|---|" + "---|" * 4 * len(names))
    for row in rows:
        cells = [f"{m['ecdp']['psnr_y']:.2f} | {m['ecdp']['ssim_y']:.4f} | {m['ecdp']['lr_psnr']:.2f} | "
                 f"{m['seconds']:.3f}" for m in row["sets"].values()]
        print(f"| {label(row['setting'])} | {_mean(row, 'nfe'):.1f} | " + " | ".join(cells) + " |")
    bicubic = [f"{n} {m['bicubic']['psnr_y']:.2f} dB" for n, m in rows[0]["sets"].items()]
    print(f"\nbicubic PSNR-Y: {', '.join(bicubic)}; device {study['device']}, seed {study['seed']}")
    best = default_setting(rows)
    print(f"default (cheapest within {MARGIN_DB} dB of the best of dopri5 tol 1e-4 and the fixed-step settings): "
          f"{label(best['setting']) if best else 'none'}")
    if args.plot:
        plot(rows, names, args.plot)


def plot(rows, names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for color, solver in enumerate(STEPS):
            for grid, style in zip(GRIDS, ("--", "-")):
                line = [r for r in rows if r["setting"]["solver"] == solver and r["setting"]["grid"] == grid]
                ax.plot([r["sets"][name]["nfe"] for r in line], [r["sets"][name]["ecdp"]["psnr_y"] for r in line],
                        style, color=f"C{color}", marker="o", ms=3, label=f"{solver}, {grid}")
        for r in rows:
            if r["setting"]["solver"] == "dopri5":
                ax.scatter(r["sets"][name]["nfe"], r["sets"][name]["ecdp"]["psnr_y"], marker="*", s=120,
                           color="k" if r["setting"]["atol"] < 1e-3 else "gray", zorder=3, label=label(r["setting"]))
        ax.axhline(rows[0]["sets"][name]["bicubic"]["psnr_y"], color="gray", lw=1, label="bicubic")
        ax.set(title=name, xlabel="network evaluations (NFE)", ylabel="Y-PSNR (dB)", xscale="log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True)
    p = commands.add_parser("run", help="score every setting and write the JSON")
    p.add_argument("--model", default="default")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--references", nargs="*", type=float, default=REFERENCE_TOLS, metavar="TOL",
                   help="dopri5 tolerances to run (default: 1e-3 1e-4; none: skip dopri5)")
    p.add_argument("--min-nfe", type=int, default=0, help="skip fixed-step settings below this NFE")
    p.add_argument("--max-nfe", type=int, default=50, help="skip fixed-step settings above this NFE")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run)
    p = commands.add_parser("report", help="print the markdown table and the default; optionally plot")
    p.add_argument("json", nargs="+", help="study JSON files of one model (run in parts), merged")
    p.add_argument("--plot", metavar="PNG")
    p.set_defaults(fn=report)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
