"""Tests of ecdp.metrics against scikit-image on the same 8-bit images."""
import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ecdp import metrics
from ecdp.metrics import lr_psnr, psnr, quantize, rgb_to_y, ssim
from ecdp.resize import downscale, upscale

SSIM_SETTINGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _pairs():
    """(clean, distorted) float64 HWC pairs in [0, 1] on 8-bit levels: natural and random images."""
    rng = np.random.default_rng(0)
    natural = data.astronaut()[100:164, 150:230] / 255.0
    noisy = np.round(np.clip(natural + rng.normal(0, 0.05, natural.shape), 0, 1) * 255) / 255
    a, b = (rng.integers(0, 256, (2, 40, 36, 3)) / 255.0)
    return [(natural, noisy), (a, b), (a, np.round((0.7 * a + 0.3 * b) * 255) / 255)]


def _chw(img):
    return torch.from_numpy(img).permute(2, 0, 1).float()


def _y(img):
    return color.rgb2ycbcr(img)[..., 0]


@pytest.mark.parametrize("a, b", _pairs())
def test_rgb_matches_skimage(a, b):
    assert float(psnr(_chw(a), _chw(b))) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
    expected = structural_similarity(a, b, channel_axis=2, data_range=1, **SSIM_SETTINGS)
    assert float(ssim(_chw(a), _chw(b))) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("a, b", _pairs())
@pytest.mark.parametrize("crop", [0, 4])
def test_y_matches_skimage(a, b, crop):
    ya, yb = _y(a), _y(b)
    if crop:
        ya, yb = ya[crop:-crop, crop:-crop], yb[crop:-crop, crop:-crop]
    expected_psnr = peak_signal_noise_ratio(ya, yb, data_range=255)
    expected_ssim = structural_similarity(ya, yb, data_range=255, **SSIM_SETTINGS)
    assert float(psnr(_chw(a), _chw(b), crop=crop, y_channel=True)) == pytest.approx(expected_psnr, abs=1e-4)
    assert float(ssim(_chw(a), _chw(b), crop=crop, y_channel=True)) == pytest.approx(expected_ssim, abs=1e-4)


def test_y_conversion_matches_skimage():
    a, _ = _pairs()[0]
    assert np.abs(rgb_to_y(_chw(a).double())[0].numpy() - _y(a)).max() < 1e-4


def test_crop_ignores_the_border():
    a = torch.rand(3, 32, 32)
    b = a.clone()
    b[:, :3] = 1 - b[:, :3]
    assert float(psnr(a, b, crop=3)) == float("inf")
    assert float(ssim(a, b, crop=3)) == pytest.approx(1.0)
    assert float(psnr(a, b)) < 20


def test_batch_gives_one_value_per_image():
    a, b = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    for metric in (psnr, ssim):
        batch = metric(a, b, y_channel=True)
        assert batch.shape == (2,)
        assert float(batch[1]) == pytest.approx(float(metric(a[1], b[1], y_channel=True)))


def test_lr_psnr_of_bicubic_is_high_and_exact_hr_is_higher():
    hr = quantize(_chw(data.astronaut()[:128, 192:320] / 255.0))
    lr = quantize(downscale(hr, 4))
    bicubic = lr_psnr(quantize(upscale(lr, 4)), lr, 4)
    assert float(bicubic) > 35
    assert float(lr_psnr(hr, lr, 4)) > float(bicubic)


def test_lpips_without_weights_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.LPIPS_ENV, str(tmp_path))
    available, reason = metrics.lpips_available()
    assert not available and metrics.ALEXNET_FILE in reason and str(tmp_path) in reason
    with pytest.raises(metrics.LpipsUnavailable, match="no LPIPS weights"):
        metrics.lpips(torch.rand(3, 64, 64), torch.rand(3, 64, 64))


def test_lpips_reads_weights_under_their_published_names(tmp_path):
    """Stand-in weights with the key names and shapes of torchvision's AlexNet and LPIPS v0.1."""
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    backbone = {f"features.{i}.weight": torch.randn(o, c, k, k) * 0.05 for i, (o, c, k) in convs.items()}
    backbone |= {f"features.{i}.bias": torch.zeros(o) for i, (o, _, _) in convs.items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)
    head = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(backbone, tmp_path / metrics.ALEXNET_FILE)
    torch.save(head, tmp_path / metrics.LPIPS_HEAD_FILE)
    assert metrics.lpips_available(tmp_path) == (True, "")
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert metrics.lpips(a, b, tmp_path).shape == (2,)
    assert float(metrics.lpips(a[0], a[0], tmp_path)) == 0
    assert float(metrics.lpips(a[0], b[0], tmp_path)) > 0
