"""``ecdp demo``: the built-in model on photos that scikit-image ships (nothing to download).

Each photo is center-cropped, degraded x(scale) with the project's bicubic, upscaled, and written as
a side-by-side strip (bicubic | ECDP | original); a table of scores against bicubic is printed. The
crops and their LR images are written too (``OUT/hr/``, ``OUT/lr/``), as inputs for the README's
examples.
"""
from pathlib import Path

from ecdp.commands import add_sampler_arguments, sampler_options, set_threads
from ecdp.errors import UserError

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CROP = 256


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="upscale scikit-image's sample photos and compare with bicubic",
                              description="Upscale scikit-image's sample photos with the built-in model.")
    p.add_argument("--out", type=Path, default=Path("ecdp-demo"), metavar="DIR",
                   help="folder for the side-by-side PNGs and the photos' HR and LR crops (default: ecdp-demo)")
    p.add_argument("--checkpoint", default="default", metavar="MODEL", help="model folder (default: built-in)")
    add_sampler_arguments(p)
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def sample_photo(name, size=CROP):
    """A center crop of one of scikit-image's bundled photos as (3, H, W) floats in [0, 1].

    Raises UserError when scikit-image (the ``demo`` extra) is not installed.
    """
    import torch

    photo = torch.from_numpy(getattr(_photos(), name)().copy()).permute(2, 0, 1).float() / 255
    h, w = photo.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return photo[:, top:top + size, left:left + size]


def _photos():
    """scikit-image's ``skimage.data``; a UserError when scikit-image (the ``demo`` extra) is not installed."""
    try:
        import skimage.data
    except ImportError:
        raise UserError('ecdp demo needs the demo extra (scikit-image\'s sample photos): '
                        'run pip install -e ".[demo]" in the ecdp folder.') from None
    return skimage.data


def run(args):
    import torch

    from ecdp import console
    from ecdp.evaluation import mean_scores, print_table, save_strip, score_image
    from ecdp.fileio import check_writable
    from ecdp.images import ImageInfo, write_image
    from ecdp.metrics import quantize
    from ecdp.resize import downscale, mod_crop
    from ecdp.upscaler import Upscaler

    _photos()
    check_writable(args.out, folder=True)
    set_threads(args)
    upscaler = Upscaler.from_pretrained(args.checkpoint, device=args.device, **sampler_options(args))
    scale = upscaler.scale
    records = []
    with torch.inference_mode(), console.progress(len(PHOTOS), desc="demo", unit="photo") as bar:
        for name in PHOTOS:
            hr = quantize(mod_crop(sample_photo(name), scale))
            record, images = score_image(hr, upscaler, None)
            save_strip(args.out, name, *images)
            write_image(args.out / "hr" / f"{name}.png", hr, None, ImageInfo())
            write_image(args.out / "lr" / f"{name}.png", quantize(downscale(hr, scale)), None, ImageInfo())
            records.append({"image": name, **record})
            bar.update()
    print_table({"data": f"scikit-image photos, {CROP}x{CROP} crops, x{scale}", "images": records,
                 "mean": mean_scores(records)}, has_lpips=False)
    print(f"\nside-by-side images (bicubic | ECDP | original): {args.out}/<photo>_strip.png")
    print(f"the photos' crops and their x{scale} LR images: {args.out}/hr/, {args.out}/lr/")
