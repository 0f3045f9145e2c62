"""Mini-ablation (the paper's Table 5 at a small budget): several models, one sampler, the same sets.

    python -m bench.ablation run --model hybrid=runs/hybrid/model eps=runs/eps/model ... \\
        --data SET5 SET14 --solver heun --steps 3 --grid logsnr --device cuda --out ablation.json
    python -m bench.ablation report ablation.json

Each model is scored with the reference engine and seed 0 (bench.quality); the report is a markdown
table of PSNR, SSIM (Y and RGB) and LR-PSNR per set, bicubic first.
"""
import argparse
import json

from bench.quality import evaluate, load_sets, write_json
from ecdp.modelfile import load_model
from ecdp.sampling import SOLVERS
from ecdp.choices import GRIDS
from ecdp.upscaler import Upscaler

COLUMNS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lr_psnr")


def run(args):
    report = {"device": args.device, "seed": args.seed, "sampler": {"solver": args.solver, "steps": args.steps,
              "grid": args.grid}, "models": {}}
    sets = None
    for name, path in (item.split("=", 1) for item in args.model):
        net, config = load_model(path)
        sets = sets or load_sets(args.data, config.scale, args.device)
        upscaler = Upscaler.from_model(net, config, device=args.device, seed=args.seed, **report["sampler"])
        report["models"][name] = {"path": path, "param": config.param, "sets": evaluate(upscaler, sets, name)}
        write_json(args.out, report)


def report(args):
    study = json.loads(open(args.json).read())
    models = study["models"]
    sampler = study["sampler"]
    print(f"sampler: {sampler['solver']} {sampler['steps']} steps ({sampler['grid']} grid), "
          f"seed {study['seed']}, device {study['device']}\n")
    print("| set | model | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | LR-PSNR |")
    print("|---|---|---|---|---|---|---|")
    first = next(iter(models.values()))["sets"]
    for set_name in first:
        rows = [("bicubic", first[set_name]["bicubic"])]
        rows += [(name, m["sets"][set_name]["ecdp"]) for name, m in models.items()]
        for name, scores in rows:
            cells = " | ".join(f"{scores[k]:.4f}" if k.startswith("ssim") else f"{scores[k]:.2f}" for k in COLUMNS)
            print(f"| {set_name} | {name} | {cells} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True)
    p = commands.add_parser("run", help="score every model and write the JSON")
    p.add_argument("--model", nargs="+", required=True, metavar="NAME=FOLDER")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR")
    p.add_argument("--solver", choices=[s for s in SOLVERS if s != "dopri5"], default="heun")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--grid", choices=GRIDS, default="logsnr")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=run)
    p = commands.add_parser("report", help="print the markdown table")
    p.add_argument("json")
    p.set_defaults(fn=report)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
