"""``ecdp eval`` in-process on a tiny model and two 32x32 images (one of them grayscale)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from ecdp import metrics
from ecdp.cli import main
from ecdp.modelfile import ModelConfig, save_model
from ecdp.nets import build


@pytest.fixture(autouse=True)
def no_lpips_weights(monkeypatch, tmp_path):
    monkeypatch.setenv(metrics.LPIPS_ENV, str(tmp_path / "no-lpips"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_model(folder, build("tiny"), ModelConfig(scale=4, solver="euler", steps=2))
    return folder


@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:256, 128:384]).resize((32, 32), Image.BICUBIC).save(folder / "astronaut.png")
    Image.fromarray(data.camera()).resize((36, 34), Image.BICUBIC).save(folder / "camera.png")
    return folder


def _eval(capsys, *args):
    rc = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_reports_both_methods_and_saves_images(model, hr_folder, tmp_path, capsys):
    report, out_dir = tmp_path / "report.json", tmp_path / "out"
    rc, out, err = _eval(capsys, "--checkpoint", model, "--data", hr_folder, "--solver", "euler", "--steps", 2,
                         "--json", report, "--save-images", out_dir)
    assert rc == 0, err
    result = json.loads(report.read_text())
    assert result["scale"] == 4 and result["solver"] == "euler" and result["steps"] == 2
    assert result["lpips"].startswith("unavailable: no LPIPS weights")
    [dataset] = result["datasets"]
    assert [r["image"] for r in dataset["images"]] == ["astronaut.png", "camera.png"]
    assert dataset["images"][1]["size"] == [32, 36]
    for row in [*dataset["images"], dataset["mean"]]:
        assert row["nfe"] == 2 and row["seconds"] > 0
        for method in ("ecdp", "bicubic"):
            scores = row[method]
            assert scores["lpips"] is None
            assert 5 < scores["psnr_rgb"] < 60 and 5 < scores["psnr_y"] < 60 and scores["lr_psnr"] > 5
            assert -1 <= scores["ssim_rgb"] <= 1 and -1 <= scores["ssim_y"] <= 1
    assert dataset["mean"]["bicubic"]["psnr_y"] == pytest.approx(
        np.mean([r["bicubic"]["psnr_y"] for r in dataset["images"]]))
    assert "mean" in out and "LPIPS: unavailable" in out
    for stem in ("astronaut", "camera"):
        assert Image.open(out_dir / "hr" / f"{stem}_sr.png").size == (32 if stem == "astronaut" else 36, 32)
    assert Image.open(out_dir / "hr" / "astronaut_strip.png").size == (96, 32)


def test_empty_folder_is_one_sentence_error(model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, out, err = _eval(capsys, "--checkpoint", model, "--data", tmp_path / "empty", "--json", tmp_path / "r.json")
    assert rc != 0
    assert err.strip().splitlines() == [f"ecdp eval: error: {tmp_path / 'empty'} has no images "
                                        "(looked for .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff)."]
    assert not (tmp_path / "r.json").exists()


def test_corrupt_image_is_skipped_with_a_warning(model, hr_folder, tmp_path, capsys):
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = tmp_path / "report.json"
    rc, out, err = _eval(capsys, "--checkpoint", model, "--data", hr_folder, "--json", report, "--limit", 2)
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    [dataset] = json.loads(report.read_text())["datasets"]
    assert [r["image"] for r in dataset["images"]] == ["astronaut.png"]
    assert dataset["skipped"] == ["broken.png"]


@pytest.mark.parametrize("option, sentence", [
    ("--json", "cannot write {out}/scores.json: {out} is a file, not a folder."),
    ("--save-images", "cannot write {out}/images: {out} is a file, not a folder."),   # one more of the kind
])
def test_outputs_are_checked_before_any_image_is_scored(model, hr_folder, tmp_path, capsys, option, sentence):
    out = tmp_path / "file"
    out.write_text("a file, not a folder")
    target = out / ("scores.json" if option == "--json" else "images")
    rc, stdout, err = _eval(capsys, "--checkpoint", model, "--data", hr_folder, option, target)
    assert rc == 1 and stdout == ""
    assert err.splitlines() == [f"ecdp eval: error: {sentence.format(out=out)}"]


def test_scores_below_bicubic_come_with_a_note(model, hr_folder, capsys):
    """An untrained model with a 2-step Euler solve is far below bicubic: the table says so."""
    rc, out, err = _eval(capsys, "--checkpoint", model, "--data", hr_folder, "--solver", "euler", "--steps", 2)
    assert rc == 0, err
    note = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and "ECDP scores below bicubic in PSNR-Y" in note[0] and "euler, 2 steps" in note[0]
