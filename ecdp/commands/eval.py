"""``ecdp eval``: ECDP against the bicubic baseline on folders of HR images (see ecdp.evaluation).

Under torchrun each image is scored by one rank; the scores meet in the order of a single process,
so rank 0 prints the same table and means.
"""
import functools
import json
from pathlib import Path

from ecdp import console
from ecdp.commands import add_sampler_arguments, positive_int, sampler_options, set_threads
from ecdp.errors import UserError


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="score ECDP and bicubic on folders of HR images",
                              description="Score ECDP against bicubic on folders of HR images.")
    p.add_argument("--checkpoint", default="default", metavar="MODEL",
                   help="model folder (default: the built-in model)")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="folders of HR images")
    p.add_argument("--scale", type=positive_int, help="check the model's scale (default: the model's)")
    add_sampler_arguments(p)
    p.add_argument("--tol", type=float, help="atol = rtol of dopri5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-images", type=Path, metavar="OUT",
                   help="write OUT/<folder>/<image>_sr.png and _strip.png (bicubic | ECDP | HR)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all scores as JSON")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N images per folder")
    p.add_argument("--lpips-weights", metavar="DIR", help="folder of the LPIPS weights (see ecdp.metrics.lpips)")
    p.set_defaults(run=run)


def run(args):
    from ecdp.evaluation import list_images
    from ecdp.fileio import check_writable
    from ecdp.ranks import ranks

    folders = {Path(d): list_images(Path(d), args.limit) for d in args.data}
    if args.json:   # outputs are checked before any image is scored
        check_writable(args.json)
    if args.save_images:
        check_writable(args.save_images, folder=True)
    with ranks(args.device) as process:
        datasets, upscaler, has_lpips, reason = _evaluate(folders, args, process)
    if process.rank == 0:
        _report(datasets, upscaler, has_lpips, reason, args)


def _evaluate(folders, args, process):
    """(datasets, upscaler, has_lpips, reason): every folder scored, each image on one rank."""
    import torch

    from ecdp.metrics import lpips, lpips_available
    from ecdp.upscaler import Upscaler

    set_threads(args)
    tol = {"atol": args.tol, "rtol": args.tol} if args.tol is not None else {}
    upscaler = Upscaler.from_pretrained(args.checkpoint, device=process.device, **sampler_options(args), **tol)
    scale = upscaler.scale
    if args.scale and args.scale != scale:
        raise UserError(f"{args.checkpoint} upscales by {scale}, not by the requested {args.scale}.")
    has_lpips, reason = lpips_available(args.lpips_weights)
    distance = functools.partial(lpips, weights=args.lpips_weights) if has_lpips else None
    total = sum(len(process.share(paths)) for paths in folders.values())
    bar = console.progress(total, desc="eval", unit="image", disable=process.rank > 0)
    with torch.inference_mode(), bar:
        datasets = [_eval_folder(folder, paths, upscaler, args, distance, bar, process)
                    for folder, paths in folders.items()]
    return datasets, upscaler, has_lpips, reason


def _report(datasets, upscaler, has_lpips, reason, args):
    """Print the tables and write the JSON report."""
    from ecdp.evaluation import METRICS, print_table
    from ecdp.fileio import atomic_path

    scale = upscaler.scale
    lpips_note = "AlexNet v0.1" if has_lpips else f"unavailable: {reason}"
    for dataset in datasets:
        print_table(dataset, has_lpips)
    print(f"LPIPS: {lpips_note}")
    for dataset in datasets:
        mean = dataset["mean"]
        if mean["ecdp"]["psnr_y"] < mean["bicubic"]["psnr_y"]:
            sampler = upscaler.sampler
            print(f"note: on {dataset['data']} ECDP scores below bicubic in PSNR-Y ({mean['ecdp']['psnr_y']:.2f} "
                  f"against {mean['bicubic']['psnr_y']:.2f} dB) with {sampler.solver}, {sampler.steps} steps on the "
                  f"{sampler.grid} grid; a model scores best with the sampler it was trained and tuned for, its "
                  "default (leave out --solver, --steps and --grid)")
    if args.json:
        report = {"checkpoint": str(args.checkpoint), "scale": scale, **_settings(args, upscaler),
                  "lpips": lpips_note, "metrics": METRICS, "datasets": datasets}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")


def _settings(args, upscaler):
    """The sampler the scores were made with: the upscaler's, which resolved the options against the model."""
    return {"engine": args.engine, "precision": upscaler.precision, "solver": upscaler.sampler.solver,
            "steps": upscaler.sampler.steps, "grid": upscaler.sampler.grid,
            "tol": args.tol, "seed": args.seed, "device": args.device}


def _eval_folder(folder, paths, upscaler, args, distance, bar, process):
    """Score this rank's readable images of one folder (warn about and skip the others); gather all ranks'."""
    from ecdp.evaluation import mean_scores, read_hr, save_strip, score_image

    results = []
    scale = upscaler.scale
    for index, path in process.share(enumerate(paths)):
        try:
            hr = read_hr(path, scale)
        except UserError as e:
            console.write(f"ecdp eval: warning: skipped {e}")
            results.append((index, path.name, None))
        else:
            record, images = score_image(hr, upscaler, distance)
            results.append((index, path.name, record))
            if args.save_images:
                save_strip(args.save_images / folder.name, path.stem, *images)
        bar.update()
    results = sorted(process.gather(results), key=lambda result: result[0])
    records = [{"image": name, **record} for _, name, record in results if record is not None]
    skipped = [name for _, name, record in results if record is None]
    if not records:
        raise UserError(f"{folder} has no readable images.")
    return {"data": str(folder), "images": records, "mean": mean_scores(records), "skipped": skipped}


