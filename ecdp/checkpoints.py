"""Training checkpoints: ``OUT/checkpoints/step-N`` folders, written atomically, verified when read.

A checkpoint holds safetensors files (weights, EMA, flattened Adam state, torch RNG states) and
``state.json``, written last, which lists the SHA-256 of each of them and carries the SHA-256 of
its own content (``checksum``); its keys and their types are checked against SCHEMA. The folder is built under a
temporary name and renamed when complete; old checkpoints are renamed away before they are
deleted, so a killed process never leaves a half checkpoint under a ``step-N`` name. A checkpoint
whose state.json cannot be read or whose files do not match their checksums is damaged: resuming
takes the newest intact one and names the damaged ones.
"""
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ecdp.bounds import AT_LEAST_1, MAX_BATCH, MAX_TRAIN_STEPS, SIGMA, Range
from ecdp.choices import STAGES
from ecdp.errors import UserError
from ecdp.fileio import fsync, os_errors, os_reason, remove_stale_temporaries, temporary_prefix

CHECKPOINTS = "checkpoints"
STATE = "state.json"
TENSOR_FILES = ("model", "ema", "optimizer", "rng")
_NAME = r"step-\d+"


def checkpoint_folders(out):
    """The ``step-N`` folders in ``out``/checkpoints, oldest first."""
    return _steps(Path(out) / CHECKPOINTS)


def latest_checkpoint(out):
    """The checkpoint folder of the highest step in ``out`` (intact or not), or None."""
    folders = checkpoint_folders(out)
    return folders[-1] if folders else None


def save_checkpoint(folder, state, tensors, keep):
    """Write ``folder/step-N`` (N = state["step"]) from the JSON-able ``state`` and the groups of
    tensors ``tensors`` ({file name: {key: tensor}}), fsynced and renamed into place, then keep
    only the last ``keep`` checkpoints (0: all). Returns the folder written. I/O errors are
    UserErrors naming it."""
    folder = Path(folder)
    final = folder / f"step-{state['step']:08d}"
    with os_errors(final):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder, _NAME)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final), dir=folder))
        try:
            files = {}
            for name, group in tensors.items():
                data = save({k: v.detach().contiguous().cpu() for k, v in group.items()})
                files[f"{name}.safetensors"] = _write(tmp / f"{name}.safetensors", data)
            state = {**state, "files": files}
            _write(tmp / STATE, (json.dumps({**state, "checksum": _digest(state)}, indent=1) + "\n").encode())
            fsync(tmp)
            if final.exists():
                _remove(final)
            os.replace(tmp, final)
            fsync(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in _steps(folder)[:-keep] if keep > 0 else []:
            _remove(old)
    return final


def read_checkpoint(path):
    """(state, {file name: {key: tensor}}) of the checkpoint folder ``path``, after checking every file
    against the checksums in its state.json. Raises UserError saying how the checkpoint is damaged."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"its {STATE} cannot be read ({os_reason(e) or e})") from None
    if not isinstance(state, dict) or "checksum" not in state:
        raise UserError(f"its {STATE} has no checksum (written by an earlier version, or not a checkpoint)")
    checksum = state.pop("checksum")
    if checksum != _digest(state):
        raise UserError(f"its {STATE} does not match its checksum (cut short or altered)")
    wrong = next((key for key, valid in SCHEMA.items() if key not in state or not valid(state[key])), None)
    if wrong is not None:
        raise UserError(f"its {STATE} holds no valid \"{wrong}\"")
    checksums = state["files"]
    tensors = {}
    for name in TENSOR_FILES:
        file = path / f"{name}.safetensors"
        try:
            data = file.read_bytes()
        except OSError as e:
            raise UserError(f"{file.name} cannot be read ({os_reason(e)})") from None
        if _sha256(data) != checksums.get(file.name):
            raise UserError(f"{file.name} does not match its checksum (cut short or altered)")
        try:
            tensors[name] = load(data)
        except SafetensorError as e:
            raise UserError(f"{file.name} is not a valid safetensors file ({e})") from None
    return state, tensors


def resume_point(out):
    """(folder, state, tensors, damaged) of the newest intact checkpoint in ``out``, where damaged lists
    (folder, reason) for each newer one; None when ``out`` holds no checkpoint. Raises UserError
    when none is intact."""
    damaged = []
    for folder in reversed(checkpoint_folders(out)):
        try:
            return (folder, *read_checkpoint(folder), damaged)
        except UserError as e:
            damaged.append((folder, str(e)))
    if damaged:
        reasons = "; ".join(f"{folder.name}: {reason}" for folder, reason in damaged)
        raise UserError(f"no intact checkpoint in {Path(out) / CHECKPOINTS} to resume from ({reasons}).")
    return None


def remove_checkpoint(path):
    """Delete a checkpoint folder: renamed to a temporary name first, so it never lies half deleted."""
    with os_errors(path):
        _remove(Path(path))


def _steps(folder):
    found = [p for p in folder.iterdir() if re.fullmatch(_NAME, p.name) and p.is_dir()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def _remove(path):
    trash = tempfile.mkdtemp(prefix=temporary_prefix(path), dir=path.parent)
    os.replace(path, trash)
    shutil.rmtree(trash)


def _write(path, data):
    """Write the bytes ``data`` to a new file and fsync it; return their SHA-256."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return _sha256(data)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _digest(state):
    """The SHA-256 of a JSON-able state, independent of the order of its keys."""
    return _sha256(json.dumps(state, sort_keys=True).encode())


def _whole(allowed):
    return lambda value: type(value) is int and value in allowed


def _keys(**valid):
    """A check that a value is a dict whose keys ``valid`` names pass their checks."""
    return lambda value: isinstance(value, dict) and all(k in value and check(value[k]) for k, check in valid.items())


def _list_of(kind):
    return lambda value: isinstance(value, list) and all(isinstance(item, kind) for item in value)


SCHEMA = {
    "stage": lambda value: value in STAGES,
    "step": _whole(Range(0, MAX_TRAIN_STEPS)),
    "sigma": lambda value: value is None or type(value) is float and value in SIGMA,
    "world": _whole(AT_LEAST_1),
    "data": _keys(samples=_whole(Range(0, MAX_TRAIN_STEPS * MAX_BATCH)), unreadable=_list_of(str),
                  files=lambda value: isinstance(value, str)),
    "optimizer": _keys(param_groups=_list_of(dict), scalars=lambda value: isinstance(value, dict)),
    "rng": _keys(python=lambda value: isinstance(value, list), numpy=lambda value: isinstance(value, list)),
    "config": lambda value: isinstance(value, dict),
    "files": lambda value: isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
}
"""What each key of a state.json must hold (see ecdp.train's Trainer._state)."""


def optimizer_tensors(optimizer):
    """The tensors of the optimizer state, flattened to ``state.{param_index}.{name}``."""
    state = optimizer.state_dict()["state"]
    return {f"state.{i}.{k}": v for i, s in state.items() for k, v in s.items() if torch.is_tensor(v)}


def optimizer_meta(optimizer):
    """The JSON part of the optimizer state: param groups and non-tensor per-parameter values."""
    sd = optimizer.state_dict()
    scalars = {f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items() if not torch.is_tensor(v)}
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_dict(tensors, meta, optimizer):
    """Rebuild an optimizer state dict from its flattened tensors and JSON part."""
    state = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
              for saved, current in zip(meta["param_groups"], optimizer.param_groups)]
    return {"state": state, "param_groups": groups}


def torch_rng_state():
    """The torch generators' states (CPU and every CUDA device), as tensors for a checkpoint."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), **{f"cuda.{i}": s for i, s in enumerate(cuda)}}


def python_rng_state():
    """Python's and numpy's global generator states, as JSON for a checkpoint."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def set_rng_state(state, tensors):
    """Restore what torch_rng_state (tensors) and python_rng_state (state) saved."""
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
