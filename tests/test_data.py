import numpy as np
import pytest
import torch
from PIL import Image

from ecdp.data import BatchOrder, DataWarning, SRDataset, derived_generator, estimate_sigma, training_images
from ecdp.metrics import quantize
from ecdp.errors import UserError
from ecdp.resize import downscale
from helpers import truncated_jpeg, write_images





@pytest.fixture
def folder(tmp_path):
    write_images(tmp_path / "hr", [(72, 64), (64, 80), (96, 64)])
    return tmp_path / "hr"


def dataset(folders, **kw):
    return SRDataset([str(f) for f in folders], **{"scale": 4, "crop": 32, **kw})


def test_samples_are_deterministic_for_a_seed(folder):
    a, b = dataset([folder], seed=3), dataset([folder], seed=3, cache_mb=0)
    y, x = a[1, 2]
    assert x.shape == (3, 32, 32) and y.shape == (3, 8, 8)
    assert all(torch.equal(u, v) for u, v in zip(a[1, 2], b[1, 2]))
    assert not torch.equal(x, a[2, 2][1])
    assert not torch.equal(x, dataset([folder], seed=4)[1, 2][1])


def test_lr_is_the_quantized_downscale_of_hr(folder):
    for key in [(0, 0), (1, 1), (5, 2)]:
        y, x = dataset([folder])[key]
        assert torch.equal(y, quantize(downscale(x, 4)))
        assert torch.equal(x, (x * 255).round() / 255)


def test_crop_is_a_window_of_the_image(folder):
    image = torch.from_numpy(np.array(Image.open(folder / "img2.png"))).permute(2, 0, 1).float() / 255
    ds = dataset([folder], augment="none")
    corners = set()
    for epoch in range(4):
        _, x = ds[epoch, 2]
        hits = [(top, left) for top in range(64 - 31) for left in range(96 - 31)
                if torch.equal(image[:, top:top + 32, left:left + 32], x)]
        assert len(hits) == 1
        corners |= set(hits)
    assert len(corners) > 1


def test_dihedral_augmentation_keeps_the_pixels(folder):
    plain = dataset([folder], augment="none")
    turned = dataset([folder], augment="dihedral")
    keys = [(e, 0) for e in range(8)]
    assert any(not torch.equal(plain[k][1], turned[k][1]) for k in keys)
    for k in keys:
        assert torch.equal(plain[k][1].flatten().sort().values, turned[k][1].flatten().sort().values)


def test_multiple_folders_searched_recursively(tmp_path, folder):
    write_images(tmp_path / "more" / "deep" / "er", [(64, 64), (40, 40)], seed=1)
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    files = training_images([folder, tmp_path / "more"])
    assert [f.name for f in files] == ["img0.png", "img1.png", "img2.png", "img0.png", "img1.png"]
    assert len(dataset([folder, tmp_path / "more"])) == 5


def test_unreadable_image_is_skipped_with_a_warning_naming_it(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.warns(DataWarning, match="broken.png"):
        ds = dataset([folder])
    assert len(ds) == 3 and all(p[0].name != "broken.png" for p in ds.pairs)


def test_image_smaller_than_the_crop_is_skipped_with_a_warning(folder):
    write_images(folder / "small", [(24, 40)])
    with pytest.warns(DataWarning, match="smaller than the 32-pixel crop"):
        assert len(dataset([folder])) == 3


def test_empty_or_missing_folder_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        dataset([tmp_path / "empty"])
    with pytest.raises(UserError, match="nowhere"):
        dataset([tmp_path / "nowhere"])


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        write_images(tmp_path / mode, [(32, 32)], mode=mode)
    (tmp_path / "I16").mkdir()
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(tmp_path / "I16" / "img0.png")
    ds = dataset([tmp_path / m for m in ("L", "RGBA", "P", "I16")])
    for index in range(4):
        y, x = ds[0, index]
        assert x.shape == (3, 32, 32) and y.shape == (3, 8, 8)
    gray = ds[0, 0][1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_paired_folders_give_aligned_crops(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "hr" / "a").mkdir(parents=True)
    (tmp_path / "lr" / "a").mkdir(parents=True)
    for name, (w, h) in {"a/one": (20, 16), "two": (12, 24)}.items():
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(lr).save(tmp_path / "lr" / f"{name}x4.png")
        Image.fromarray(lr.repeat(4, 0).repeat(4, 1)).save(tmp_path / "hr" / f"{name}.png")
    ds = SRDataset([str(tmp_path / "hr")], lr=[str(tmp_path / "lr")], scale=4, crop=32, augment="dihedral")
    assert len(ds) == 2
    for key in [(0, 0), (1, 0), (2, 1), (3, 1)]:
        y, x = ds[key]
        assert y.shape == (3, 8, 8)
        assert torch.equal(x, y.repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_paired_folder_without_partner_is_a_user_error(tmp_path):
    write_images(tmp_path / "hr", [(32, 32)])
    (tmp_path / "lr").mkdir()
    with pytest.raises(UserError, match="img0.png has no LR image"):
        SRDataset([str(tmp_path / "hr")], lr=[str(tmp_path / "lr")], scale=4, crop=32)


def test_center_resize_gives_whole_images_of_that_size(folder):
    y, x = dataset([folder], crop=None, center_resize=48, augment="none")[0, 2]
    assert x.shape == (3, 48, 48) and y.shape == (3, 12, 12)


def test_batch_order_splits_global_batches_across_ranks_and_resumes():
    single = BatchOrder(5, 4, seed=1)
    ranks = [BatchOrder(5, 4, seed=1, rank=r, world=2) for r in range(2)]
    for step in range(6):
        position = 4 * step
        assert single.keys(position) == ranks[0].keys(position) + ranks[1].keys(position)
    stream = [key for step in range(5) for key in single.keys(4 * step)]
    assert sorted(i for e, i in stream if e == 0) == list(range(5))
    resumed = iter(BatchOrder(5, 4, seed=1, start=8))
    assert next(resumed) == single.keys(8)
    with pytest.raises(UserError, match="not divisible"):
        BatchOrder(5, 3, seed=0, world=2)


def test_dataloader_workers_give_the_same_batches(folder):
    ds = dataset([folder], seed=2)

    def batches(workers):
        order = BatchOrder(len(ds), 2, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=order, num_workers=workers)
        return [b for _, b in zip(range(3), loader)]

    for (y0, x0), (y2, x2) in zip(batches(0), batches(2)):
        assert torch.equal(y0, y2) and torch.equal(x0, x2)


def test_sigma_estimate_is_seeded(folder):
    ds = dataset([folder])
    sigma = estimate_sigma(ds, 6, seed=0)
    assert 0 < sigma < 0.5
    assert sigma == estimate_sigma(ds, 6, seed=0) != estimate_sigma(ds, 6, seed=1)


def test_derived_generators_differ_by_key():
    draw = [torch.rand(2, generator=derived_generator(*k)) for k in [(1, 2, 3), (1, 2, 3), (1, 3, 2), (1, 2)]]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])


def epoch_batches(ds, workers, epochs=2):
    order = BatchOrder(len(ds), 2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=order, num_workers=workers)
    return [b for _, b in zip(range(epochs * len(ds) // 2), loader)]


def test_image_unreadable_in_training_is_skipped_once_and_never_read_again(folder, monkeypatch):
    bad = truncated_jpeg(folder / "bad")
    ds = dataset([folder], cache_mb=0)
    assert len(ds) == 4 and ds.unreadable() == []
    reads = []
    original = SRDataset._load
    monkeypatch.setattr(SRDataset, "_load", lambda self, pair: reads.append(pair[0]) or original(self, pair))
    with pytest.warns(DataWarning, match=r"skipping training image .*cut.jpg: .*not a readable image") as caught:
        batches = epoch_batches(ds, workers=0, epochs=3)
    assert len([w for w in caught if "cut.jpg" in str(w.message)]) == 1
    assert reads.count(bad) == 1 and ds.unreadable() == [str(bad)]
    assert all(x.shape == (2, 3, 32, 32) and torch.isfinite(x).all() for _, x in batches)


def test_unreadable_image_is_shared_by_workers_and_gives_the_same_batches(folder):
    bad = truncated_jpeg(folder / "bad")
    alone, with_workers = dataset([folder], cache_mb=0), dataset([folder], cache_mb=0)
    with pytest.warns(DataWarning, match="cut.jpg"):
        reference = epoch_batches(alone, workers=0)
    batches = epoch_batches(with_workers, workers=2)
    assert with_workers.unreadable() == [str(bad)]
    for (y0, x0), (y2, x2) in zip(reference, batches):
        assert torch.equal(y0, y2) and torch.equal(x0, x2)


def test_image_removed_after_the_start_is_skipped(folder):
    ds = dataset([folder], cache_mb=0)
    (folder / "img1.png").unlink()
    with pytest.warns(DataWarning, match=r"skipping training image .*img1.png: .*no such file"):
        batches = epoch_batches(ds, workers=0)
    assert len(batches) == 3 and ds.unreadable() == [str(folder / "img1.png")]


def test_marked_images_are_not_read_and_give_the_same_batches(folder, monkeypatch):
    bad = truncated_jpeg(folder / "bad")
    first = dataset([folder], cache_mb=0)
    with pytest.warns(DataWarning, match="cut.jpg"):
        reference = epoch_batches(first, workers=0)
    resumed = dataset([folder], cache_mb=0)
    resumed.mark_unreadable(first.unreadable())
    reads = []
    original = SRDataset._load
    monkeypatch.setattr(SRDataset, "_load", lambda self, pair: reads.append(pair[0]) or original(self, pair))
    for (y0, x0), (y1, x1) in zip(reference, epoch_batches(resumed, workers=0)):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert bad not in reads and resumed.unreadable() == [str(bad)]
