"""Training data: HR crops and their LR images, deterministic for a seed.

Sample ``(epoch, index)`` of a dataset draws its crop and augmentation from a generator derived
from (seed, epoch, index) only, so it is the same in any process, DataLoader worker or rank.
``BatchOrder`` cuts one seeded stream of epoch permutations into global batches and gives each
rank its slice of every batch: the data order depends on the seed and the batch size, not on the
number of processes, and resuming needs only the number of samples consumed.

Files are checked once, when the dataset is built: an unreadable one (or one smaller than the
crop) is skipped with one warning naming it. With the cache on, that check is a full decode;
without it, a file that fails to decode later, in training, is skipped the same way: marked in
memory that every DataLoader worker shares, never read again, and its samples taken from the
next readable image, so the batches do not depend on which process found it.
"""
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ecdp.errors import UserError
from ecdp.images import read_image
from ecdp.metrics import quantize
from ecdp.resize import downscale, mod_crop, resize, upscale

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
AUGMENTS = ("none", "flip", "dihedral")
ORDER, SAMPLE, SIGMA, NOISE = 1, 2, 3, 4  # purposes of derived generators


class DataWarning(UserWarning):
    """A training image that was skipped."""


def derived_generator(*keys, device="cpu"):
    """A torch.Generator seeded from a tuple of non-negative integers."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator(device).manual_seed(seed)


def training_images(folders):
    """Image files under ``folders`` (recursive), sorted per folder; a missing folder is a UserError."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"training data folder {folder} does not exist.")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return files


def read_image_uint8(path):
    """An image file as 8-bit RGB (3, H, W) (any mode; alpha dropped); a UserError names a bad file."""
    rgb, _, _ = read_image(path)
    return (rgb * 255).round().to(torch.uint8)


def to_float(image):
    """uint8 (..., H, W) -> float32 in [0, 1]."""
    return image.float() / 255.0


class SRDataset(torch.utils.data.Dataset):
    """(LR, HR) float pairs (3, c/s, c/s), (3, c, c) from HR folders, optionally with paired LR folders."""

    def __init__(self, hr, *, scale, crop, lr=(), center_resize=None, augment="dihedral", cache_mb=0, seed=0):
        if augment not in AUGMENTS:
            raise UserError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTS)}.")
        if center_resize and lr:
            raise UserError("center_resize applies to LR images made by downscaling, not to paired LR folders.")
        if center_resize and (center_resize % scale or (crop or 0) > center_resize):
            raise UserError(f"center_resize {center_resize} must be a multiple of the scale {scale} "
                            f"and at least the crop {crop}.")
        self.scale, self.crop, self.center_resize = scale, crop, center_resize
        self.augment, self.seed = augment, seed
        pairs = _pair(hr, lr, scale) if lr else [(p, None) for p in training_images(hr)]
        sizes = {pair: self._inspect(pair) for pair in pairs}
        self.pairs = [pair for pair in pairs if sizes[pair]]
        decoded_mb = sum(w * h * 3 for pair in self.pairs for w, h in sizes[pair]) / 2**20
        self.cache = self._decode_all() if self.pairs and decoded_mb <= cache_mb else None
        if not self.pairs:
            raise UserError(f"no usable training images in {', '.join(map(str, hr))}.")
        self._unreadable = torch.zeros(len(self.pairs), dtype=torch.bool).share_memory_()

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        """Sample ``key = (epoch, index)``."""
        epoch, index = key
        return self.sample(index, derived_generator(SAMPLE, self.seed, epoch, index))

    def sample(self, index, generator):
        """A random crop of image ``index`` and its LR image, drawn from ``generator``."""
        hr, lr = self.cache[index] if self.cache is not None else self._readable(index)
        if lr is None:
            (x,) = _augment([_random_crop(hr, self.crop, generator)], self.augment, generator)
            x = to_float(x)
            return quantize(downscale(x, self.scale)), x
        x, y = _augment(_random_crop_pair(hr, lr, self.crop, self.scale, generator), self.augment, generator)
        return to_float(y), to_float(x)

    def fingerprint(self):
        """A digest of the files the samples come from and their order: a dataset with another
        fingerprint gives another data order."""
        names = "\n".join(f"{hr}\t{lr or ''}" for hr, lr in self.pairs)
        return hashlib.sha256(names.encode()).hexdigest()

    def unreadable(self):
        """The HR paths (str) of the pairs found unreadable in training so far, by any worker."""
        return [str(self.pairs[i][0]) for i in self._unreadable.nonzero().flatten().tolist()]

    def mark_unreadable(self, paths):
        """Skip the pairs of these HR paths without reading them (``unreadable()`` of an earlier run)."""
        paths = set(map(str, paths))
        for i, (hr_path, _) in enumerate(self.pairs):
            self._unreadable[i] |= str(hr_path) in paths

    def _readable(self, index):
        """The decoded pair ``index``, or the next readable one when it cannot be read; a pair that
        fails is warned about and marked, and never read again."""
        for offset in range(len(self.pairs)):
            i = (index + offset) % len(self.pairs)
            if self._unreadable[i]:
                continue
            try:
                return self._load(self.pairs[i])
            except UserError as e:
                self._unreadable[i] = True
                _warn_skipped(self.pairs[i], e)
        raise UserError("none of the training images can be read any more.")

    def _inspect(self, pair):
        """The (width, height) of each file of ``pair``, or None (with a warning) when it is unusable."""
        try:
            sizes = [_checked_size(p) for p in pair if p is not None]
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            warnings.warn(f"skipping training image {pair[0]}: cannot read it ({e}).", DataWarning)
            return None
        smallest = min(sizes[-1]) * (self.scale if pair[1] else 1)
        if self.crop and not self.center_resize and smallest < self.crop:
            warnings.warn(f"skipping training image {pair[0]}: {sizes[0][0]}x{sizes[0][1]} is smaller "
                          f"than the {self.crop}-pixel crop.", DataWarning)
            return None
        return sizes

    def _decode_all(self):
        """Decode every pair; drop, with a warning, those that fail to decode."""
        decoded, usable = [], []
        for pair in self.pairs:
            try:
                decoded.append(self._load(pair))
                usable.append(pair)
            except UserError as e:
                _warn_skipped(pair, e)
        self.pairs = usable
        return decoded

    def _load(self, pair):
        """Decoded uint8 HR (center-resized, else mod-cropped) and LR (or None) of a pair."""
        hr_path, lr_path = pair
        hr = read_image_uint8(hr_path)
        hr = center_resize(hr, self.center_resize) if self.center_resize else mod_crop(hr, self.scale)
        lr = read_image_uint8(lr_path) if lr_path else None
        if lr is not None and tuple(lr.shape[1:]) != (hr.shape[1] // self.scale, hr.shape[2] // self.scale):
            raise UserError(f"{lr_path} is {lr.shape[2]}x{lr.shape[1]}, but its HR image {hr_path} "
                            f"needs {hr.shape[2] // self.scale}x{hr.shape[1] // self.scale} at x{self.scale}.")
        return hr, lr


def center_resize(image, size):
    """Center-crop a uint8 image to a square, then bicubic-resize it to size x size (8-bit again)."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = to_float(image[:, top:top + side, left:left + side])
    return (resize(square, (size, size)).clamp(0, 1) * 255).round().to(torch.uint8)


def estimate_sigma(dataset, crops, seed):
    """std of x - mu(y) over ``crops`` random training crops (eq. 5's sigma), in float64."""
    generator = derived_generator(SIGMA, seed)
    indices = torch.randint(len(dataset), (crops,), generator=generator)
    total = total_sq = count = 0.0
    for index in indices.tolist():
        y, x = dataset.sample(index, generator)
        residual = (x - upscale(y[None], dataset.scale)[0]).double()
        total += residual.sum().item()
        total_sq += residual.square().sum().item()
        count += residual.numel()
    mean = total / count
    return float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


class BatchOrder(torch.utils.data.Sampler):
    """Infinite batches of ``(epoch, index)`` keys for one rank, from global sample ``start`` on.

    The global sample stream is the concatenation of seeded permutations of epochs 0, 1, ...; each
    global batch is the next ``batch`` samples of it, and rank ``r`` of ``world`` takes its ``r``-th
    equal slice. Resuming needs only the number of samples consumed.
    """

    def __init__(self, size, batch, *, seed, rank=0, world=1, start=0):
        if batch % world:
            raise UserError(f"the batch size {batch} is not divisible by the {world} processes.")
        self.size, self.batch, self.seed = size, batch, seed
        self.per_rank, self.rank, self.start = batch // world, rank, start
        self._perm = (None, None)

    def __iter__(self):
        position = self.start
        while True:
            yield self.keys(position)
            position += self.batch

    def keys(self, position):
        """The keys of this rank in the global batch that starts at sample ``position``."""
        begin = position + self.rank * self.per_rank
        return [self._key(k) for k in range(begin, begin + self.per_rank)]

    def _key(self, position):
        epoch, offset = divmod(position, self.size)
        if self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.size, generator=derived_generator(ORDER, self.seed, epoch)))
        return epoch, int(self._perm[1][offset])


def _checked_size(path):
    """(width, height) of an image file, after PIL's integrity check."""
    with Image.open(path) as img:
        size = img.size
        img.verify()
    return size


def _warn_skipped(pair, error):
    """One warning that the pair of the HR file pair[0] is skipped, for the UserError ``error``."""
    warnings.warn(f"skipping training image {pair[0]}: {str(error).removeprefix(f'{pair[0]}: ')}", DataWarning)


def _pair(hr_folders, lr_folders, scale):
    """(HR, LR) file pairs; LR files match HR files by relative name, an ``xS`` suffix allowed."""
    if len(hr_folders) != len(lr_folders):
        raise UserError(f"{len(hr_folders)} HR folders but {len(lr_folders)} paired LR folders; give one LR "
                        "folder per HR folder.")
    pairs = []
    for hr_folder, lr_folder in zip(map(Path, hr_folders), map(Path, lr_folders)):
        lr_files = {}
        for path in training_images([lr_folder]):
            stem = path.relative_to(lr_folder).with_suffix("").as_posix()
            lr_files[stem.removesuffix(f"x{scale}")] = path
        for path in training_images([hr_folder]):
            stem = path.relative_to(hr_folder).with_suffix("").as_posix()
            if stem not in lr_files:
                raise UserError(f"HR image {path} has no LR image in {lr_folder}.")
            pairs.append((path, lr_files[stem]))
    return pairs


def _random_crop(image, crop, generator):
    """A random crop x crop window (the whole image when crop is None)."""
    if crop is None:
        return image
    h, w = image.shape[-2:]
    top = int(torch.randint(h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(w - crop + 1, (1,), generator=generator))
    return image[:, top:top + crop, left:left + crop]


def _random_crop_pair(hr, lr, crop, scale, generator):
    """Aligned random crops of an HR image and its LR image."""
    if crop is None:
        return hr, lr
    small = crop // scale
    h, w = lr.shape[-2:]
    top = int(torch.randint(h - small + 1, (1,), generator=generator))
    left = int(torch.randint(w - small + 1, (1,), generator=generator))
    y = lr[:, top:top + small, left:left + small]
    return hr[:, top * scale:(top + small) * scale, left * scale:(left + small) * scale], y


def _augment(images, augment, generator):
    """The same random horizontal flip ("flip"), plus vertical flip and transpose ("dihedral"), of each image."""
    if augment == "none":
        return images
    hflip, vflip, transpose = torch.randint(2, (3,), generator=generator).tolist()
    dihedral = augment == "dihedral"
    out = []
    for image in images:
        if hflip:
            image = image.flip(-1)
        if dihedral and vflip:
            image = image.flip(-2)
        if dihedral and transpose:
            image = image.transpose(-1, -2)
        out.append(image.contiguous())
    return out
