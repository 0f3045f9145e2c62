import io
import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from ecdp.cli import main
from helpers import SCALE, files_under, image_of_mode, one_line, random_uint8, save_tiny_model, upscale


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), steps=1))


def _truncated_png(path):
    buffer = io.BytesIO()
    Image.fromarray(random_uint8((16, 16, 3))).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:200])


BAD_FILES = {
    "missing": lambda path: None,
    "empty": lambda path: path.write_bytes(b""),
    "truncated": _truncated_png,
    "text": lambda path: path.write_text("not an image\n"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_input_is_one_sentence_and_no_output(model, tmp_path, capsys, kind):
    src, out = tmp_path / f"{kind}.png", tmp_path / "out"
    BAD_FILES[kind](src)
    assert upscale(model, src, "-o", out) == 1
    line = one_line(capsys)
    assert line.startswith(f"ecdp upscale: error: {src}: ")
    assert files_under(out) == []


def test_failed_write_leaves_no_file(model, tmp_path, capsys):
    src, out = tmp_path / "in.png", tmp_path / "out"
    Image.fromarray(random_uint8((8, 8, 4))).save(src)
    assert upscale(model, src, "-o", out / "x.jpg") == 1
    assert "cannot be written as JPEG (cannot write mode RGBA as JPEG)" in one_line(capsys)
    assert files_under(out) == []


def test_missing_default_model_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ecdp.modelfile.DEFAULT_MODEL", tmp_path / "not-installed")
    src = tmp_path / "in.png"
    Image.fromarray(random_uint8((8, 8, 3))).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out")]) == 1
    assert one_line(capsys) == (f"ecdp upscale: error: the built-in default model is missing from this installation "
                                f"({tmp_path / 'not-installed'}); reinstall ecdp or pass a model folder (--checkpoint PATH).")


@pytest.mark.parametrize("mode, out_mode", [("L", "L"), ("RGBA", "RGBA"), ("P", "RGB"), ("I;16", "I;16")])
def test_modes_are_kept(model, tmp_path, mode, out_mode):
    image = image_of_mode(mode, w=12, h=8)
    image.save(tmp_path / "in.png")
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "out.png") == 0
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == out_mode and out.size == (SCALE * 12, SCALE * 8)


def test_several_files_are_all_written(model, tmp_path):
    inputs = [tmp_path / name for name in ("a.png", "b.bmp", "c.unknown")]
    for index, path in enumerate(inputs):
        Image.fromarray(random_uint8((8, 8, 3), seed=index)).save(path, format="PNG" if index != 1 else "BMP")
    assert upscale(model, *inputs, "-o", tmp_path / "out") == 0
    assert files_under(tmp_path / "out") == ["a.png", "b.bmp", "c.png"]
    with Image.open(tmp_path / "out" / "b.bmp") as out:
        assert out.size == (SCALE * 8, SCALE * 8)


def test_a_bad_file_does_not_stop_the_others(model, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(random_uint8((8, 8, 3))).save(good)
    bad.write_text("not an image\n")
    assert upscale(model, bad, good, "-o", tmp_path / "out") == 1
    assert files_under(tmp_path / "out") == ["good.png"]
    assert f"{bad}: not a readable image" in capsys.readouterr().err


def test_help_says_how_failures_end(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "exits with status 1" in " ".join(capsys.readouterr().out.split())


def test_one_image_shows_its_solver_steps_over_all_tiles(model, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(random_uint8((16, 16, 3))).save(src)
    assert upscale(model, src, "-o", tmp_path / "out.png", "--tile", 8, "--steps", 2) == 0
    lines = capsys.readouterr().err.splitlines()
    tiles = 9                                      # 16 LR pixels in tiles of 8 overlapping by 2: 3 x 3
    assert [line.split(",")[0] for line in lines] == [f"upscale {src}: step {i} of {2 * tiles} done"
                                                      for i in range(1, 2 * tiles + 1)]


def test_several_images_show_one_line_per_image_and_quiet_shows_none(model, tmp_path, capsys):
    inputs = [tmp_path / f"{name}.png" for name in "ab"]
    for index, path in enumerate(inputs):
        Image.fromarray(random_uint8((8, 8, 3), seed=index)).save(path)
    assert upscale(model, *inputs, "-o", tmp_path / "out") == 0
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "upscale: image 1 of 2 done", "upscale: image 2 of 2 done"]
    assert upscale(model, *inputs, "-o", tmp_path / "quiet", "--quiet") == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_one_image_with_dopri5_counts_network_evaluations(model, tmp_path, capsys, quiet):
    """dopri5 has no step total: the count goes on without one, and --quiet (a silent bar) works too."""
    src = tmp_path / "in.png"
    Image.fromarray(random_uint8((8, 8, 3))).save(src)
    assert upscale(model, src, "-o", tmp_path / "out.png", "--solver", "dopri5", *quiet) == 0
    lines = capsys.readouterr().err.splitlines()
    assert (tmp_path / "out.png").is_file()
    assert lines == [] if quiet else lines[-1].startswith(f"upscale {src}: network evaluation {len(lines)} done")


def test_threads_option_sets_the_cpu_threads(model, tmp_path):
    import torch

    before = torch.get_num_threads()
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    try:
        assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "out.png", "--threads", 1) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "out.png").is_file()
    with pytest.raises(SystemExit):
        upscale(model, tmp_path / "in.png", "-o", tmp_path / "out2.png", "--threads", 0)


def zeros_png(path, side):
    """A valid side x side 8-bit gray PNG of zeros, written a row at a time (20000: 1.7 MB on disk)."""
    deflate = zlib.compressobj(1)
    data = b"".join(deflate.compress(bytes(side + 1)) for _ in range(side)) + deflate.flush()
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)), (b"IDAT", data), (b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks))


def run_limited(*args, memory=4_000_000 * 1024):
    """`python -m ecdp ARGS` in a child process under an address-space limit (``ulimit -v``); (rc, stderr)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    done = subprocess.run([sys.executable, "-m", "ecdp", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit, cwd=Path(__file__).parent.parent)
    return done.returncode, done.stderr


def test_an_image_too_large_for_the_memory_is_refused_before_decoding_and_the_batch_goes_on(model, tmp_path):
    """A 20000x20000 PNG let through by --max-pixels, under ulimit -v 4000000: one sentence with what it
    needs, and the other file is still written."""
    big, small, out = tmp_path / "big.png", tmp_path / "small.png", tmp_path / "out"
    zeros_png(big, 20000)
    Image.fromarray(random_uint8((8, 8, 3))).save(small)
    rc, err = run_limited("upscale", big, small, "-o", out, "--max-pixels", 400_000_000, "--checkpoint", model,
                          "--device", "cpu", "--quiet")
    assert rc == 1 and "Traceback" not in err
    assert re.fullmatch(rf"ecdp upscale: error: {big}: upscaling its 20000x20000 pixels needs [\d.]+ GB of memory "
                        r"and [\d.]+ GB are available\necdp upscale: 1 of 2 images failed\n", err)
    assert files_under(out) == ["small.png"]


def test_running_out_of_memory_anyway_ends_that_file_only(model, tmp_path, capsys, monkeypatch):
    """An allocator error the estimate did not foresee (here in the decoder) is one file's error."""
    import ecdp.images

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(ecdp.images, "_samples", no_memory)
    src, out = tmp_path / "in.png", tmp_path / "out"
    Image.fromarray(random_uint8((8, 8, 3))).save(src)
    assert upscale(model, src, "-o", out) == 1
    assert one_line(capsys) == f"ecdp upscale: error: {src}: not enough memory to decode it"
    assert files_under(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command, device, sentence", [
    ("upscale", "cuda", "device cuda is not available: no CUDA GPU was found"),
    ("eval", "cuda", "device cuda is not available: no CUDA GPU was found"),
    ("train", "cuda", "device cuda is not available: no CUDA GPU was found"),
    ("upscale", "foo", "'foo' is not a device name (try cpu or cuda)"),
    ("eval", "meta", "device meta is not supported; use cpu or cuda"),
])
def test_devices_are_checked_before_anything_else(model, tmp_path, capsys, command, device, sentence):
    Image.fromarray(random_uint8((64, 64, 3))).save(tmp_path / "in.png")
    args = {"upscale": [tmp_path / "in.png", "-o", tmp_path / "out/", "--checkpoint", model],
            "eval": ["--data", tmp_path, "--checkpoint", model, "--json", tmp_path / "out" / "s.json"],
            "train": ["--config", "configs/tiny.yaml", "--data", tmp_path, "--out", tmp_path / "out"]}[command]
    assert main([command, *map(str, args), "--device", device]) == 1
    assert one_line(capsys) == f"ecdp {command}: error: {sentence}"
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("option, sentence", [
    (["--threads", "1000000000"], r"--threads must be at most \d+ \(4 per CPU core\), got 1000000000"),
    (["--seed", "-1"], r"the seed must be a whole number in \[0, 18446744073709551615\], got -1"),
    (["--seed", str(2**70)], r"the seed must be a whole number in \[0, 18446744073709551615\], got \d+"),
])
def test_options_bounded_by_what_they_cost(model, tmp_path, capsys, option, sentence):
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "out", *option) == 1
    assert re.fullmatch(f"ecdp upscale: error: {sentence}", one_line(capsys))
    assert files_under(tmp_path / "out") == []
