"""``ecdp demo``: strips, the photos' crops and LR images, the table; one sentence without scikit-image."""
import sys

import numpy as np
import torch
from PIL import Image

from ecdp.cli import main
from ecdp.commands.demo import PHOTOS
from ecdp.resize import downscale
from helpers import SCALE, save_tiny_model


def test_demo_writes_strips_crops_and_lr_images(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", steps=1)
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(model), "--out", str(out)]) == 0
    for name in PHOTOS:
        strip, hr, lr = (np.array(Image.open(path)) for path in
                         (out / f"{name}_strip.png", out / "hr" / f"{name}.png", out / "lr" / f"{name}.png"))
        assert strip.shape == (hr.shape[0], 3 * hr.shape[1], 3) and (strip[:, -hr.shape[1]:] == hr).all()
        expected = downscale(torch.from_numpy(hr).permute(2, 0, 1).double() / 255, SCALE).clamp(0, 1)
        assert np.abs(lr / 255 - expected.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-9
    printed = capsys.readouterr().out
    assert "mean" in printed and f"{out}/lr/" in printed


def test_demo_without_scikit_image_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    model = save_tiny_model(tmp_path / "model", steps=1)
    assert main(["demo", "--checkpoint", str(model), "--out", str(tmp_path / "demo")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        'ecdp demo: error: ecdp demo needs the demo extra (scikit-image\'s sample photos): '
        'run pip install -e ".[demo]" in the ecdp folder.']
    assert not (tmp_path / "demo").exists()
