"""`ecdp train` and `ecdp-export` under bad settings, damaged files and failing disks: one sentence,
exit code 1 and nothing lost or half written on disk."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ecdp.cli import main
from ecdp.export import cli as export_cli
from ecdp.export import onnx_export
from helpers import BASE, TINY, dead_pid, tensors, truncated_jpeg, write_images

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parent.parent



def train(images, out, *overrides, resume=False):
    """`ecdp train` of the tiny config for a few steps; the exit code."""
    return main(["train", "--config", TINY, "--data", str(images), "--out", str(out), "--device", "cpu",
                 "--set", *BASE, *overrides, *(["--resume"] if resume else [])])


def error(capsys):
    """The one error line of the last command (and that there was exactly one)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0].split(": error: ", 1)[1]


def files(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def hidden(folder):
    return [p for p in Path(folder).rglob(".*")]


@pytest.fixture(scope="module")
def two_steps(images, tmp_path_factory):
    """A finished 2-step run (checkpoint step-2, model) to resume from."""
    out = tmp_path_factory.mktemp("two") / "out"
    assert train(images, out, "train.steps=2") == 0
    return out


@pytest.fixture(scope="module")
def four_steps(images, tmp_path_factory):
    """A 4-step run in one go: checkpoints step-2 and step-4."""
    out = tmp_path_factory.mktemp("four") / "out"
    assert train(images, out, "train.steps=4") == 0
    return out


def copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


# --- every config key is checked on load ---------------------------------------------------------

@pytest.mark.parametrize("item, sentence", [
    ("train.steps=0", "train.steps (in --set) must be in [1, 1000000000], got 0."),
    ("train.steps=-5", "train.steps (in --set) must be in [1, 1000000000], got -5."),
    ("train.batch=0", "train.batch (in --set) must be in [1, 4096], got 0."),
    ("data.workers=-1", "data.workers (in --set) must be in [0, 256], got -1."),
    ("data.sigma_crops=0", "data.sigma_crops (in --set) must be in [1, 100000], got 0."),
    ("train.lr=-1", "train.lr (in --set) must be a finite number greater than 0, got -1.0."),
    ("train.warmup=-3", "train.warmup (in --set) must be in [0, 1000000000], got -3."),
    ("train.ema=2", "train.ema (in --set) must be a finite number in [0, 1), got 2.0."),
    ("model.sigma=-1", "model.sigma (in --set) must be a finite number in [0.0001, 1.0] or null, got -1.0."),
    ("model.sigma=0", "model.sigma (in --set) must be a finite number in [0.0001, 1.0] or null, got 0.0."),
    ("train.lr=nan", "train.lr (in --set) must be a finite number greater than 0, got nan."),
    ("train.log_every=0", "train.log_every (in --set) must be in [1, 1000000000], got 0."),  # one more of the kind
])
def test_out_of_range_setting_stops_before_anything_is_written(images, tmp_path, capsys, item, sentence):
    assert train(images, tmp_path / "out", item) == 1
    assert error(capsys) == sentence
    assert not (tmp_path / "out").exists()


# --- non-finite losses ---------------------------------------------------------------------------

def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(images, two_steps, tmp_path, capsys):
    out = copy(two_steps, tmp_path)
    before = files(out)
    assert train(images, out, "train.steps=6", "train.lr=1e30", "train.warmup=0", resume=True) == 1
    sentence = error(capsys)
    assert sentence.startswith("training diverged at step ") and "stopped without saving" in sentence
    assert f"{out / 'checkpoints' / 'step-00000002'} is the last good checkpoint" in sentence
    after = files(out)
    assert {k: v for k, v in after.items() if k.startswith(("checkpoints", "model"))} == \
        {k: v for k, v in before.items() if k.startswith(("checkpoints", "model"))}
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "model" / "model.safetensors")).values())
    assert "nan" not in (out / "log.csv").read_text() and not hidden(out)


def test_flat_images_give_no_sigma_and_stop_before_training(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (90, 120, 30)).save(tmp_path / "flat" / f"{i}.png")
    assert train(tmp_path / "flat", tmp_path / "out", "train.steps=2") == 1
    sentence = error(capsys)
    assert sentence.startswith("model.sigma estimated from 4 training crops is ")
    assert sentence.endswith("below 0.0001: the images have no detail beyond their bicubic upscaling; train on "
                             "other images.")
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "model").exists()


# --- resume defines what may change --------------------------------------------------------------

@pytest.mark.parametrize("changes, listed", [
    (["model.scale=2"], "model.scale 4 -> 2"),
    (["model.param=eps", "train.batch=4", "train.lr=0.5"], "model.param 'hybrid' -> 'eps', train.batch 2 -> 4"),
    (["model.preset=small"], "model.preset 'tiny' -> 'small'"),
    (["data.crop=16", "train.seed=3"], "data.crop 32 -> 16, train.seed 0 -> 3"),  # one more of the kind
])
def test_resume_refuses_changes_of_the_model_or_the_data_order(images, two_steps, tmp_path, capsys, changes, listed):
    out = copy(two_steps, tmp_path)
    before = files(out)
    assert train(images, out, "train.steps=4", *changes, resume=True) == 1
    assert error(capsys) == (f"--resume cannot change {listed}, since that changes the model or the data order of "
                             f"{out / 'checkpoints' / 'step-00000002'}; set them back, or train into another --out.")
    assert files(out) == before
    assert json.loads((out / "model" / "config.json").read_text())["scale"] == 4


def test_resume_takes_schedule_changes_and_records_them(images, two_steps, four_steps, tmp_path, capsys):
    out = copy(two_steps, tmp_path)
    assert train(images, out, "train.steps=4", "train.log_every=2", resume=True) == 0
    assert "with train.steps 2 -> 4, train.log_every 1 -> 2" in capsys.readouterr().err
    log = (out / "train.log").read_text().splitlines()
    assert len(log) == 1 and log[0].endswith(
        "step 2: resumed from step-00000002 at step 2, with train.steps 2 -> 4, train.log_every 1 -> 2.")
    assert "steps: 4" in (out / "config.yaml").read_text() and "log_every: 2" in (out / "config.yaml").read_text()
    a, b = tensors(four_steps, 4), tensors(out, 4)
    assert all(torch.equal(a[name][k], b[name][k]) for name in a for k in a[name])


# --- a damaged latest checkpoint -----------------------------------------------------------------

def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file, reason", [
    (cut_short, "model.safetensors", "model.safetensors does not match its checksum (cut short or altered)"),
    (cut_short, "state.json", "its state.json cannot be read"),
    (flip_a_byte, "ema.safetensors", "ema.safetensors does not match its checksum"),  # one more of the kind
])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(images, four_steps, tmp_path, capsys,
                                                                 damage, file, reason):
    out = copy(four_steps, tmp_path)
    damage(out / "checkpoints" / "step-00000004" / file)
    assert train(images, out, "train.steps=4", resume=True) == 0
    err = capsys.readouterr().err
    assert f"ecdp train: checkpoint {out / 'checkpoints' / 'step-00000004'} is damaged ({reason}" in err
    assert "and was removed; resuming from the intact step-00000002." in err
    assert "is damaged" in (out / "train.log").read_text()
    a, b = tensors(four_steps, 4), tensors(out, 4)
    assert all(torch.equal(a[name][k], b[name][k]) for name in a for k in a[name])
    assert files(out)["model/model.safetensors"] == files(four_steps)["model/model.safetensors"]


def edit_state(path, change):
    """Apply ``change`` to a state.json; with a checksum made again when it holds one (a schema check)."""
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def resign(change):
    """``change`` and then a checksum that matches the changed state, as a careful forger would."""
    def apply(state):
        state.pop("checksum")
        change(state)
        state["checksum"] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return apply


@pytest.mark.parametrize("change, reason", [
    (lambda state: state.update(step=1000), "its state.json does not match its checksum (cut short or altered)"),
    (resign(lambda state: state.pop("rng")), 'its state.json holds no valid "rng"'),
    (lambda state: state.pop("checksum"), "its state.json has no checksum"),
    (resign(lambda state: state.update(sigma=1e300)), 'its state.json holds no valid "sigma"'),  # one more
])
def test_an_edited_state_is_damaged_not_believed(images, four_steps, tmp_path, capsys, change, reason):
    out = copy(four_steps, tmp_path)
    edit_state(out / "checkpoints" / "step-00000004" / "state.json", change)
    assert train(images, out, "train.steps=4", resume=True) == 0
    err = capsys.readouterr().err
    assert f"ecdp train: checkpoint {out / 'checkpoints' / 'step-00000004'} is damaged ({reason}" in err
    a, b = tensors(four_steps, 4), tensors(out, 4)
    assert all(torch.equal(a[name][k], b[name][k]) for name in a for k in a[name])


@pytest.mark.parametrize("change", ["add", "remove"])
def test_resume_refuses_a_changed_data_folder(images, tmp_path, capsys, change):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    out = tmp_path / "out"
    assert train(data, out, "train.steps=2") == 0
    if change == "add":
        shutil.copy(next(data.iterdir()), data / "zz-added.png")
    else:
        sorted(data.iterdir())[0].unlink()
    before = files(out)
    assert train(data, out, "train.steps=4", resume=True) == 1
    assert error(capsys) == (f"--resume cannot continue {out / 'checkpoints' / 'step-00000002'}: the training images "
                             f"in {data} are not those it was trained on (files added, removed or renamed change the "
                             "data order); restore them, or train into another --out.")
    assert files(out) == before


@pytest.mark.parametrize("damage", [cut_short, lambda path: path.write_text("not safetensors")])
def test_a_damaged_init_encoder_is_one_sentence(images, tmp_path, capsys, damage):
    enc = tmp_path / "enc"
    assert main(["train", "--config", TINY, "--data", str(images), "--out", str(enc), "--device", "cpu",
                 "--stage", "encoder", "--set", *BASE, "encoder_stage.steps=1"]) == 0
    damage(enc / "encoder.safetensors")
    capsys.readouterr()
    assert train(images, tmp_path / "out", "train.steps=2", f"train.init_encoder={enc}") == 1
    assert error(capsys).startswith(f"{enc / 'encoder.safetensors'} is not a valid safetensors file (")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_no_intact_checkpoint_is_one_sentence(images, four_steps, tmp_path, capsys):
    out = copy(four_steps, tmp_path)
    for step in (2, 4):
        cut_short(out / "checkpoints" / f"step-{step:08d}" / "rng.safetensors")
    before = files(out)
    assert train(images, out, "train.steps=4", resume=True) == 1
    assert error(capsys).startswith(f"no intact checkpoint in {out / 'checkpoints'} to resume from (step-00000004: "
                                    "rng.safetensors does not match its checksum")
    assert files(out) == before


# --- an unreadable image found in training -------------------------------------------------------

@pytest.fixture(scope="module")
def with_truncated_jpeg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpeg")
    write_images(folder, [(48, 40), (40, 56), (64, 48)])
    return folder, truncated_jpeg(folder / "sub")


def skipped(recorded, path):
    """How many of the ``recorded`` warnings skip the training image ``path``."""
    return sum(f"skipping training image {path}" in str(w.message) for w in recorded)


def test_truncated_jpeg_without_cache_is_skipped_once_also_on_resume(with_truncated_jpeg, tmp_path, recwarn):
    folder, bad = with_truncated_jpeg
    out = tmp_path / "out"
    assert train(folder, out, "data.cache_mb=0", "train.steps=4") == 0
    assert skipped(recwarn, bad) == 1
    recwarn.clear()
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["data"]["unreadable"] == [str(bad)]
    assert f"skipped the unreadable training image {bad}." in (out / "train.log").read_text()
    assert train(folder, out, "data.cache_mb=0", "train.steps=8", resume=True) == 0
    assert skipped(recwarn, bad) == 0
    assert (out / "checkpoints" / "step-00000008").is_dir()


def test_truncated_jpeg_with_loader_workers_gives_the_same_run(with_truncated_jpeg, tmp_path):
    """Worker processes skip it the same way: one warning, and the weights of the run without workers."""
    folder, bad = with_truncated_jpeg
    assert train(folder, tmp_path / "alone", "data.cache_mb=0", "train.steps=4") == 0
    command = [sys.executable, "-m", "ecdp", "train", "--config", TINY, "--data", str(folder), "--out",
               str(tmp_path / "workers"), "--device", "cpu", "--set", *BASE, "data.cache_mb=0", "train.steps=4",
               "data.workers=2"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count(f"skipping training image {bad}") == 1
    a, b = tensors(tmp_path / "alone", 4), tensors(tmp_path / "workers", 4)
    assert all(torch.equal(a[name][k], b[name][k]) for name in a for k in a[name])


# --- output locations ----------------------------------------------------------------------------

def test_out_in_a_read_only_folder(images, read_only, capsys):
    assert train(images, read_only / "run", "train.steps=2") == 1
    assert error(capsys) == f"cannot write {read_only / 'run'}: Permission denied."
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("out, blocker", [("afile/run", "afile"), ("afile", "afile")])  # the 2nd: one more
def test_out_under_or_onto_a_file(images, tmp_path, capsys, out, blocker):
    (tmp_path / "afile").write_text("keep")
    assert train(images, tmp_path / out, "train.steps=2") == 1
    assert error(capsys) == f"cannot write {tmp_path / out}: {tmp_path / blocker} is a file, not a folder."
    assert files(tmp_path) == {"afile": b"keep"}


def test_full_disk_during_a_checkpoint(images, tmp_path):
    """A file size limit below the checkpoint's size makes the OS refuse its write, as a full disk does."""
    limit = 64 * 1024
    command = [sys.executable, "-c", "import resource, sys\nfrom ecdp.cli import main\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\nsys.exit(main(sys.argv[1:]))",
               "train", "--config", TINY, "--data", str(images), "--out", str(tmp_path / "out"), "--device", "cpu",
               "--set", *BASE, "train.steps=2"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [f"ecdp train: error: cannot write {tmp_path / 'out' / 'checkpoints' / 'step-00000002'}: "
                      "File too large."]
    assert sorted(files(tmp_path / "out")) == ["config.yaml", "log.csv"] and not hidden(tmp_path / "out")


@pytest.fixture
def no_export(monkeypatch):
    """Fail the test if the export work starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("the export started before its output was checked")
    monkeypatch.setattr(onnx_export, "export_onnx", refuse)


def test_export_into_a_read_only_folder(read_only, no_export, capsys):
    for output in (read_only / "x.onnx", read_only / "new" / "x.onnx"):  # the 2nd: one more of the kind
        assert export_cli.main(["--onnx", "default", "-o", str(output)]) == 1
        assert error(capsys) == f"cannot write {output}: Permission denied."
    assert list(read_only.iterdir()) == []


def test_export_under_a_file_or_onto_a_folder(tmp_path, no_export, capsys):
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "folder").mkdir()
    assert export_cli.main(["--onnx", "default", "-o", str(tmp_path / "afile" / "x.onnx")]) == 1
    assert error(capsys) == f"cannot write {tmp_path / 'afile' / 'x.onnx'}: {tmp_path / 'afile'} is a file, not a folder."
    assert export_cli.main(["--onnx", "default", "-o", str(tmp_path / "folder")]) == 1
    assert error(capsys) == f"cannot write {tmp_path / 'folder'}: it is a folder; give a file name."
    assert files(tmp_path) == {"afile": b"keep"} and list((tmp_path / "folder").iterdir()) == []


# --- temporaries of killed runs ------------------------------------------------------------------

def test_resumed_run_removes_the_temporaries_of_a_killed_one(images, two_steps, tmp_path):
    out = copy(two_steps, tmp_path)
    dead = dead_pid()
    leftovers = [out / "checkpoints" / f".step-00000003.{dead}.ab12_xyz", out / f".config.yaml.{dead}.ab12_xyz.yaml",
                 out / "model" / f".model.safetensors.{dead}.ab12_xyz.safetensors"]
    leftovers[0].mkdir()
    (leftovers[0] / "model.safetensors").write_bytes(b"half")
    for path in leftovers[1:]:
        path.write_bytes(b"half")
    assert train(images, out, "train.steps=3", resume=True) == 0
    assert not hidden(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
