"""Scoring super-resolved images against their HR originals and the bicubic baseline (docs/design.md section 3).

The HR image is mod-cropped to the scale and degraded by the project's bicubic ``downscale``; the LR
image, the SR output and the bicubic baseline are quantized to 8 bits before scoring.
"""
import time

import torch

from ecdp.data import IMAGE_EXTENSIONS
from ecdp.errors import UserError
from ecdp.images import ImageInfo, read_image, write_image
from ecdp.metrics import SSIM_RADIUS, lr_psnr, psnr, quantize, ssim
from ecdp.resize import downscale, mod_crop, upscale

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


def list_images(folder, limit=None):
    """The sorted image files of ``folder``, at most ``limit``; a UserError when there are none."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise UserError(f"{folder} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    return paths[:limit]


def read_hr(path, scale):
    """The HR image of ``path`` as 8-bit RGB (3, H, W), mod-cropped to ``scale``."""
    rgb, _alpha, _info = read_image(path)
    hr = quantize(mod_crop(rgb.float(), scale))
    smallest = 2 * SSIM_RADIUS + 1 + 2 * scale
    if min(hr.shape[-2:]) < smallest:
        raise UserError(f"{path}: too small ({hr.shape[-2]}x{hr.shape[-1]}); scoring at x{scale} needs "
                        f"at least {smallest} pixels a side")
    return hr


def score_image(hr, upscaler, distance):
    """Scores of ECDP and bicubic on one HR image, computed on hr's device; and the (bicubic, sr, hr)
    images."""
    scale = upscaler.scale
    lr = quantize(downscale(hr, scale))
    start = time.perf_counter()
    sr = upscaler.sample(lr[None])[0].to(hr.device)
    if sr.is_cuda:
        torch.cuda.synchronize(sr.device)
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


def mean_scores(records):
    """Means over images of NFE, seconds and every score of both methods (null stays null)."""
    def avg(values):
        return None if None in values else sum(values) / len(values)
    mean = {key: avg([r[key] for r in records]) for key in ("nfe", "seconds")}
    for method in METHODS:
        mean[method] = {m: avg([r[method][m] for r in records]) for m in METRICS}
    return mean


def save_strip(folder, stem, bicubic, sr, hr):
    """Write ``stem_sr.png`` and ``stem_strip.png`` (bicubic | ECDP | HR) into ``folder``."""
    write_image(folder / f"{stem}_sr.png", sr, None, ImageInfo())
    write_image(folder / f"{stem}_strip.png", torch.cat([bicubic, sr, hr], dim=-1), None, ImageInfo())


def print_table(dataset, has_lpips):
    keys = [k for k in METRICS if has_lpips or k != "lpips"]
    print(f"\n{dataset['data']}")
    print(f"{'image':<24}{'method':<9}" + "".join(f"{HEADERS[k]:>10}" for k in keys) + f"{'NFE':>7}{'sec':>9}")
    rows = [(r["image"], r) for r in dataset["images"]] + [("mean", dataset["mean"])]
    for name, row in rows:
        for method, label in METHODS.items():
            cells = "".join(f"{row[method][k]:>10.{4 if k in ('ssim_rgb', 'ssim_y', 'lpips') else 2}f}" for k in keys)
            cost = f"{row['nfe']:>7.4g}{row['seconds']:>9.3f}" if method == "ecdp" else f"{'-':>7}{'-':>9}"
            print(f"{name if method == 'bicubic' else '':<24}{label:<9}{cells}{cost}")
