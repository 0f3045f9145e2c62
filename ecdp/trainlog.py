"""``OUT/log.csv``: the mean training loss of each logging interval, its learning rate and speed."""
import csv
import time

import torch.distributed as dist

from ecdp.fileio import atomic_path, os_errors


class LossLog:
    """The mean loss over each logging interval (and over processes), appended to OUT/log.csv by rank 0."""

    def __init__(self, path, step, process):
        self.path, self.process = path, process
        self.total, self.count, self.since = 0.0, 0, (step, time.perf_counter())
        if process.is_main:
            truncate_log(path, step)

    def add(self, loss):
        self.total, self.count = self.total + loss, self.count + 1

    def write(self, step, lr):
        """Append one row; return the mean loss."""
        mean = self.total / self.count
        if self.process.world > 1:
            dist.all_reduce(mean)
            mean = mean / self.process.world
        mean = float(mean)
        last_step, last_time = self.since
        rate = (step - last_step) / max(time.perf_counter() - last_time, 1e-9)
        if self.process.is_main:
            with os_errors(self.path), open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([step, f"{mean:.6g}", f"{lr:.6g}", f"{rate:.4g}"])
        self.total, self.count, self.since = 0.0, 0, (step, time.perf_counter())
        return mean


def truncate_log(path, step):
    """Start OUT/log.csv, or keep only its whole rows up to ``step`` (those after a resumed checkpoint,
    and a row cut short by a killed process, go)."""
    with os_errors(path):
        rows = list(csv.reader(path.open())) if path.is_file() else []
    header = ["step", "loss", "lr", "it/s"]
    rows = [header] + [r for r in rows[1:] if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
