"""``ecdp eval``: ECDP against the bicubic baseline on folders of HR images (DESIGN section 3).

Each HR image is mod-cropped to the scale and degraded by the project's bicubic ``downscale``;
the LR image, the SR output and the bicubic baseline are quantized to 8 bits before scoring.
"""
import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ecdp.errors import UserError
from ecdp.fileio import atomic_path
from ecdp.images import ImageInfo, read_image, write_image
from ecdp.metrics import SSIM_RADIUS, lpips, lpips_available, lr_psnr, psnr, quantize, ssim
from ecdp.resize import downscale, mod_crop, upscale
from ecdp.sampling import SOLVERS
from ecdp.upscaler import GRIDS, Upscaler

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
METHODS = {"bicubic": "bicubic", "ecdp": "ECDP"}
METRICS = {
    "psnr_rgb": "PSNR (dB) on RGB, data range 1, no border crop",
    "ssim_rgb": "SSIM on RGB (mean over channels), no border crop",
    "psnr_y": "PSNR (dB) on BT.601 Y (0..255, data range 255), scale pixels cropped",
    "ssim_y": "SSIM on BT.601 Y (data range 255), scale pixels cropped",
    "lr_psnr": "PSNR (dB) on RGB between downscale(SR) and the LR input",
    "lpips": "LPIPS (AlexNet, v0.1) on RGB; null when its weights are not on the machine",
}
HEADERS = {"psnr_rgb": "PSNR-RGB", "ssim_rgb": "SSIM-RGB", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y",
           "lr_psnr": "LR-PSNR", "lpips": "LPIPS"}


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="score ECDP and bicubic on folders of HR images",
                              description="Score ECDP against bicubic on folders of HR images.")
    p.add_argument("--checkpoint", required=True, metavar="MODEL", help="model folder")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="folders of HR images")
    p.add_argument("--scale", type=_positive, help="check the model's scale (default: the model's)")
    p.add_argument("--solver", choices=SOLVERS, help="default: the model's")
    p.add_argument("--steps", type=_positive, help="steps of a fixed-step solver (default: the model's)")
    p.add_argument("--grid", choices=GRIDS, help="time grid (default: the model's)")
    p.add_argument("--tol", type=float, help="atol = rtol of dopri5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-images", type=Path, metavar="OUT",
                   help="write OUT/<folder>/<image>_sr.png and _strip.png (bicubic | ECDP | HR)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all scores as JSON")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N images per folder")
    p.add_argument("--lpips-weights", metavar="DIR", help="folder of the LPIPS weights (see ecdp.metrics.lpips)")
    p.set_defaults(run=run)


def run(args):
    folders = {Path(d): _list_images(Path(d), args.limit) for d in args.data}
    tol = {"atol": args.tol, "rtol": args.tol} if args.tol is not None else {}
    upscaler = Upscaler.from_pretrained(args.checkpoint, device=args.device, solver=args.solver, steps=args.steps,
                                        seed=args.seed, grid=args.grid, **tol)
    scale = upscaler.config.scale
    if args.scale and args.scale != scale:
        raise UserError(f"{args.checkpoint} upscales by {scale}, not by the requested {args.scale}.")
    has_lpips, reason = lpips_available(args.lpips_weights)
    distance = functools.partial(lpips, weights=args.lpips_weights) if has_lpips else None
    bar = tqdm(total=sum(map(len, folders.values())), unit="img", file=sys.stderr, desc="eval")
    with torch.inference_mode(), bar:
        datasets = [_eval_folder(folder, paths, upscaler, args, distance, bar) for folder, paths in folders.items()]
    lpips_note = "AlexNet v0.1" if has_lpips else f"unavailable: {reason}"
    for dataset in datasets:
        _print_table(dataset, has_lpips)
    print(f"LPIPS: {lpips_note}")
    if args.json:
        report = {"checkpoint": str(args.checkpoint), "scale": scale, **_settings(args, upscaler.config),
                  "lpips": lpips_note, "metrics": METRICS, "datasets": datasets}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _settings(args, config):
    return {"solver": args.solver or config.solver, "steps": args.steps or config.steps,
            "grid": args.grid or config.grid, "tol": args.tol, "seed": args.seed, "device": args.device}


def _list_images(folder, limit):
    """The sorted image files of ``folder``, at most ``limit``; a UserError when there are none."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not paths:
        raise UserError(f"{folder} has no images (looked for {', '.join(EXTENSIONS)}).")
    return paths[:limit]


def _eval_folder(folder, paths, upscaler, args, distance, bar):
    """Score every readable image of one folder; warn about and skip the others."""
    records, skipped = [], []
    scale = upscaler.config.scale
    for path in paths:
        try:
            hr = _read_hr(path, scale)
        except UserError as e:
            tqdm.write(f"ecdp eval: warning: skipped {e}", file=sys.stderr)
            skipped.append(path.name)
        else:
            record, images = _eval_image(hr, upscaler, distance)
            records.append({"image": path.name, **record})
            if args.save_images:
                _save(args.save_images / folder.name, path.stem, *images)
        bar.update()
    if not records:
        raise UserError(f"{folder} has no readable images.")
    return {"data": str(folder), "images": records, "mean": _mean(records), "skipped": skipped}


def _read_hr(path, scale):
    """The HR image of ``path`` as 8-bit RGB (3, H, W), mod-cropped to ``scale``."""
    rgb, _alpha, _info = read_image(path)
    hr = quantize(mod_crop(rgb.float(), scale))
    smallest = 2 * SSIM_RADIUS + 1 + 2 * scale
    if min(hr.shape[-2:]) < smallest:
        raise UserError(f"{path}: too small ({hr.shape[-2]}x{hr.shape[-1]}); scoring at x{scale} needs "
                        f"at least {smallest} pixels a side")
    return hr


def _eval_image(hr, upscaler, distance):
    """Scores of ECDP and bicubic on one HR image; and the (bicubic, sr, hr) images."""
    scale = upscaler.config.scale
    lr = quantize(downscale(hr, scale))
    start = time.perf_counter()
    sr = upscaler.sample(lr[None])[0].cpu()
    seconds = time.perf_counter() - start
    sr, bicubic = quantize(sr.float()), quantize(upscale(lr, scale))
    record = {"size": list(hr.shape[-2:]), "nfe": upscaler.last_nfe, "seconds": seconds,
              "ecdp": _scores(sr, hr, lr, scale, distance), "bicubic": _scores(bicubic, hr, lr, scale, distance)}
    return record, (bicubic, sr, hr)


def _scores(img, hr, lr, scale, distance):
    return {"psnr_rgb": float(psnr(img, hr)), "ssim_rgb": float(ssim(img, hr)),
            "psnr_y": float(psnr(img, hr, crop=scale, y_channel=True)),
            "ssim_y": float(ssim(img, hr, crop=scale, y_channel=True)),
            "lr_psnr": float(lr_psnr(img, lr, scale)),
            "lpips": float(distance(img, hr)) if distance else None}


def _mean(records):
    """Means over images of NFE, seconds and every score of both methods (null stays null)."""
    def avg(values):
        return None if None in values else sum(values) / len(values)
    mean = {key: avg([r[key] for r in records]) for key in ("nfe", "seconds")}
    for method in METHODS:
        mean[method] = {m: avg([r[method][m] for r in records]) for m in METRICS}
    return mean


def _save(folder, stem, bicubic, sr, hr):
    """Write ``stem_sr.png`` and ``stem_strip.png`` (bicubic | ECDP | HR) into ``folder``."""
    write_image(folder / f"{stem}_sr.png", sr, None, ImageInfo())
    write_image(folder / f"{stem}_strip.png", torch.cat([bicubic, sr, hr], dim=-1), None, ImageInfo())


def _print_table(dataset, has_lpips):
    keys = [k for k in METRICS if has_lpips or k != "lpips"]
    print(f"\n{dataset['data']}")
    print(f"{'image':<24}{'method':<9}" + "".join(f"{HEADERS[k]:>10}" for k in keys) + f"{'NFE':>7}{'sec':>9}")
    rows = [(r["image"], r) for r in dataset["images"]] + [("mean", dataset["mean"])]
    for name, row in rows:
        for method, label in METHODS.items():
            cells = "".join(f"{row[method][k]:>10.{4 if k in ('ssim_rgb', 'ssim_y', 'lpips') else 2}f}" for k in keys)
            cost = f"{row['nfe']:>7.4g}{row['seconds']:>9.3f}" if method == "ecdp" else f"{'-':>7}{'-':>9}"
            print(f"{name if method == 'bicubic' else '':<24}{label:<9}{cells}{cost}")
