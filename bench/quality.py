"""What the sampler study and the ablation share: HR test sets held on the device, their mean scores
under one Upscaler (ecdp.evaluation: x4 MATLAB-style bicubic LR, Y channel with a scale-pixel crop),
and JSON written atomically."""
import json
from pathlib import Path

import torch

from ecdp import console
from ecdp.evaluation import list_images, mean_scores, read_hr, score_image
from ecdp.fileio import atomic_path


def load_sets(folders, scale, device):
    """{folder name: [(image name, HR tensor on device)]} for every image of each folder."""
    return {Path(folder).name: [(p.name, read_hr(p, scale).to(device)) for p in list_images(Path(folder))]
            for folder in folders}


def evaluate(upscaler, sets, desc):
    """{set name: mean scores (ecdp.evaluation.mean_scores)} of upscaler on every image of sets."""
    means = {}
    total = sum(map(len, sets.values()))
    with torch.inference_mode(), console.progress(total, desc=desc, unit="image") as bar:
        for name, images in sets.items():
            records = []
            for _, hr in images:
                records.append(score_image(hr, upscaler, None)[0])
                bar.update()
            means[name] = mean_scores(records)
    return means


def write_json(path, report):
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
