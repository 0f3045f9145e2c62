"""The service under load: images per second and p50/p99 latency at 1, 4 and 16 concurrent clients,
batched (--max-batch N) against unbatched (--max-batch 1), measured in one run on loopback.

    python -m bench.serve_load                                   # built-in model, CPU, LR 32x32
    python -m bench.serve_load --device cuda --lr 64 --requests 512

Each mode starts ``python -m ecdp serve`` on 127.0.0.1 and, for each number of clients, sends
`--requests` POST /v1/upscale requests (PNG files of distinct random images, seeds 0, 1, ...) from
that many threads, each on a keep-alive connection, after a warm-up of one request per client (the clock starts when every client is warm).
A request's latency is from sending it to reading the whole answer. Prints a markdown table, the
ratio of batched to unbatched throughput at the most clients, and the p99 check: the batched p99
against the unbatched p99 plus --max-wait-ms plus one batch's solve (a batch of --max-batch images
timed in this process with the same engine and threads).
"""
import argparse
import concurrent.futures
import http.client
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.harness import THREADS
from ecdp.upscaler import Upscaler

ROOT = Path(__file__).parent.parent
CLIENTS = (1, 4, 16)
START_S = 300


def images(count, size):
    """`count` PNG files (bytes) of distinct random size x size RGB images."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


class Service:
    """``python -m ecdp serve`` with these options on 127.0.0.1; stopped with SIGTERM."""

    def __init__(self, options):
        command = [sys.executable, "-m", "ecdp", "serve", "--port", "0", *options]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in self.process.stderr:
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise SystemExit(f"the service exited with status {self.process.wait()}")
        deadline = time.monotonic() + START_S
        while self._status("/readyz") != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the service was not ready in time")
            time.sleep(0.2)

    def _status(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def load(self, files, clients, requests):
        """(images per second, [latency in seconds of each request]) of `requests` requests from `clients` threads."""
        def client(index):
            post(http.client.HTTPConnection("127.0.0.1", self.port, timeout=600), index, files[index % len(files)])
            barrier.wait()   # a fresh connection after it: the service closes idle keep-alive ones after 5 s
            started.append(time.perf_counter())
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            latencies = []
            for n in range(index, requests, clients):
                start = time.perf_counter()
                post(connection, n, files[n % len(files)], close=False)
                latencies.append(time.perf_counter() - start)
            connection.close()
            return latencies

        barrier, started = threading.Barrier(clients), []   # the clock starts once every client is warm
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
        wall = time.perf_counter() - min(started)
        return requests / wall, [t for r in results for t in r]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        self.process.stderr.close()


def post(connection, seed, body, close=True):
    """POST one image with this seed and read the whole answer; SystemExit unless it is 200."""
    try:
        connection.request("POST", f"/v1/upscale?seed={seed}", body=body)
        response = connection.getresponse()
        response.read()
    finally:
        if close:
            connection.close()
    if response.status != 200:
        raise SystemExit(f"request {seed} got status {response.status}")


def batch_solve_s(args):
    """Seconds of one solve of a batch of --max-batch images at the benchmark's size (after one warm-up)."""
    torch.set_num_threads(args.threads)
    upscaler = Upscaler.from_pretrained(args.checkpoint, device=args.device, **_engine(args))
    y = torch.rand(args.max_batch, 3, args.lr, args.lr, generator=torch.Generator().manual_seed(0))
    upscaler.sample(y, seeds=range(args.max_batch))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    upscaler.sample(y, seeds=range(args.max_batch))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _engine(args):
    return {"engine": args.engine} if args.engine else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--engine", help="passed to ecdp serve (default: its own)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lr", type=int, default=32, help="LR side of the images, pixels (default: 32)")
    parser.add_argument("--requests", type=int, default=128, help="timed requests per row (default: 128)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads of the service (default: 1)")
    args = parser.parse_args()

    files = images(32, args.lr)
    common = ["--checkpoint", args.checkpoint, "--device", args.device, "--threads", str(args.threads),
              "--max-wait-ms", str(args.max_wait_ms), "--queue", str(4 * max(CLIENTS)), *_engine_flag(args)]
    rows = {}
    for mode, batch in (("batched", args.max_batch), ("unbatched", 1)):
        service = Service([*common, "--max-batch", str(batch)])
        try:
            for clients in CLIENTS:
                rate, latencies = service.load(files, clients, args.requests)
                rows[mode, clients] = (rate, np.percentile(latencies, 50), np.percentile(latencies, 99))
                print(f"{mode:9} {clients:2} clients: {rate:7.2f} images/s", file=sys.stderr, flush=True)
        finally:
            service.stop()
    solve = batch_solve_s(args)

    print(f"\nLR {args.lr}x{args.lr}, {args.device}, {args.threads} thread(s), --max-batch {args.max_batch}, "
          f"--max-wait-ms {args.max_wait_ms:g}, {args.requests} requests per row\n")
    print("| clients | mode | images/s | p50 ms | p99 ms |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for clients in CLIENTS:
        for mode in ("batched", "unbatched"):
            rate, p50, p99 = rows[mode, clients]
            label = f"--max-batch {args.max_batch}" if mode == "batched" else "--max-batch 1"
            print(f"| {clients} | {label} | {rate:.2f} | {1000 * p50:.1f} | {1000 * p99:.1f} |")
    most = max(CLIENTS)
    ratio = rows["batched", most][0] / rows["unbatched", most][0]
    bound = rows["unbatched", most][2] + args.max_wait_ms / 1000 + solve
    print(f"\nbatched / unbatched throughput at {most} clients: {ratio:.2f}x")
    print(f"p99 at {most} clients: batched {1000 * rows['batched', most][2]:.1f} ms, bound {1000 * bound:.1f} ms "
          f"(unbatched p99 + max wait + one batch's solve of {1000 * solve:.1f} ms): "
          f"{'within' if rows['batched', most][2] <= bound else 'OVER'}")


def _engine_flag(args):
    return ["--engine", args.engine] if args.engine else []


if __name__ == "__main__":
    main()
