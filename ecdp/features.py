"""Feature maps F of the image quality loss: image (B, 3, H, W) in [0, 1] -> features.

- ``pixel``: the identity (the quality loss becomes an L1 pixel loss).
- ``vgg19``: VGG19 up to conv5_4 before its ReLU on ImageNet-normalized input (the paper's F),
  512 channels at 1/16 resolution. The weights are torchvision's file, read from an explicit path,
  else ``$ECDP_VGG19_WEIGHTS``, else the torch hub cache (``<hub>/checkpoints/vgg19-dcbb9e9d.pth``),
  with ``safetensors`` (``.safetensors``) or ``torch.load(weights_only=True)``.
- ``lpips`` is not implemented: it is a distance with learned per-channel weights, not a feature
  map under an L1 distance, so asking for it is a user error.
"""
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ecdp.errors import UserError

FEATURE_MAPS = ("pixel", "vgg19")
VGG19_ENV = "ECDP_VGG19_WEIGHTS"
VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_map(name, weights=None):
    """The feature map `name` as a frozen module in eval mode; `weights`: the vgg19 weight file."""
    if name == "pixel":
        module = nn.Identity()
    elif name == "vgg19":
        module = VGG19Features()
        module.load(vgg19_weights_path(weights))
    elif name == "lpips":
        raise UserError("the lpips feature map is not implemented; choose 'pixel' or 'vgg19'.")
    else:
        raise UserError(f"unknown feature map {name!r}; choose one of {', '.join(FEATURE_MAPS)}.")
    return module.eval().requires_grad_(False)


def vgg19_weights_path(weights=None):
    """The VGG19 weight file: `weights`, else $ECDP_VGG19_WEIGHTS, else torchvision's hub cache file."""
    default = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    path = Path(weights or os.environ.get(VGG19_ENV) or default).expanduser()
    if not path.is_file():
        raise UserError(f"the vgg19 feature map needs its weights at {path} (set {VGG19_ENV} to use another file).")
    return path


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features[:35]``: conv1_1 to conv5_4, without the last ReLU."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in VGG19_CONFIG:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers[:-1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image):
        return self.features((image - self.mean) / self.std)

    def load(self, path):
        """Load the ``features.<i>.*`` tensors of a torchvision VGG19 state dict (others are ignored)."""
        try:
            if path.suffix == ".safetensors":
                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(f"cannot read VGG19 weights from {path}: {str(error).splitlines()[0]}") from error
        state = state if isinstance(state, dict) else {}
        expected = self.features.state_dict()
        kept = {key: state.get(f"features.{key}") for key in expected}
        wrong = [key for key, value in kept.items() if value is None or value.shape != expected[key].shape]
        if wrong:
            raise UserError(f"{path} is not a torchvision VGG19 state dict: features.{wrong[0]} is missing "
                            "or has the wrong shape.")
        self.features.load_state_dict(kept)
