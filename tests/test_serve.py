"""ecdp serve: answers equal to the CLI's images, batching, overload, disconnects, bad bodies and the drain.

Each service runs as ``python -m ecdp serve`` on 127.0.0.1 (a port the system picks) with a tiny
model and images of 8x8 to 16x12 LR pixels, and is stopped by the test (SIGTERM, then SIGKILL
after a bound). Every wait is bounded.
"""
import asyncio
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from ecdp.cli import main   # noqa: E402
from ecdp.serve.batching import Batcher, QueueFull   # noqa: E402
from ecdp.upscaler import Upscaler   # noqa: E402
from helpers import save_tiny_model

ROOT = Path(__file__).parent.parent
SIZES = ((8, 8), (12, 16), (16, 12))   # LR (height, width)
BATCH_LEVELS = 1   # see assert_cli_image
START_S = 120      # bound on a service's start (model load and warm-up on a busy 2-core machine)
ANSWER_S = 60      # bound on any one answer


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six small RGB PNG files, two of each size in SIZES."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        h, w = SIZES[i % len(SIZES)]
        path = folder / f"lr{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def one_thread():
    """PyTorch on one thread, as the services run (--threads 1): tiny solves on a busy machine are
    many times slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_images(model, images, tmp_path_factory):
    """The CLI's answer (``ecdp upscale FILE --seed S``, run in this process) for each file and seed 0-4, as arrays."""
    folder = tmp_path_factory.mktemp("cli")
    answers = {}
    with one_thread():
        for seed in range(5):
            for src in images:
                dst = folder / f"{src.stem}-{seed}.png"
                assert main(["upscale", str(src), "-o", str(dst), "--checkpoint", str(model), "--seed", str(seed),
                             "--device", "cpu", "-q"]) == 0
                answers[src, seed] = np.asarray(Image.open(dst))
    return answers


def assert_cli_image(answer, expected, batched):
    """An answer of the service has the CLI's pixels: exactly when it was solved alone (--max-batch 1),
    and to within BATCH_LEVELS of 255 when it may have been batched.

    The CPU kernels round differently at different batch sizes (PyTorch computes a linear layer of
    one row as a matrix-vector product, sends small fp32 convolutions of one image to its im2col
    fallback instead of oneDNN, and splits the group norm's sums over threads by batch size), so a
    batched image differs from the image solved alone by float rounding: less than 1/255 (up to
    0.68/255 measured with the built-in model in bf16), at most one level of an 8-bit output.
    """
    if batched:
        difference = np.abs(answer.astype(int) - expected.astype(int)).max()
        assert difference <= BATCH_LEVELS, f"{difference} levels from the CLI's image"
    else:
        np.testing.assert_array_equal(answer, expected)


class Server:
    """``python -m ecdp serve`` with the given options on 127.0.0.1, the port chosen by the system."""

    def __init__(self, model, *options):
        command = [sys.executable, "-m", "ecdp", "serve", "--checkpoint", str(model), "--port", "0",
                   "--threads", "1", *options]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.port = self._port()
        self._wait_ready()

    def _port(self):
        deadline = time.monotonic() + START_S
        for line in self.process.stderr:
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
            assert time.monotonic() < deadline, "the service did not start in time"
        raise AssertionError(f"the service exited with status {self.process.wait()} before listening")

    def _wait_ready(self):
        deadline = time.monotonic() + START_S
        while self.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the service was not ready in time"
            time.sleep(0.2)

    def request(self, method, path, body=None):
        """(status, headers, body) of one request on a connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=ANSWER_S)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path):
        status, _, body = self.request("GET", path)
        return status, body

    def upscale(self, body, query=""):
        return self.request("POST", "/v1/upscale" + query, body)

    def metric(self, name):
        """The value of a metric line `name` (with its labels) of /metrics, 0 when absent."""
        text = self.get("/metrics")[1].decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self):
        """SIGTERM, and the exit status (SIGKILL past the bound: the test then fails on the status)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=ANSWER_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.process.stderr.close()


@pytest.fixture
def serve(model):
    """Start services (``serve(*options)``); each is stopped at the end of the test."""
    servers = []

    def start(*options):
        servers.append(Server(model, *options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def decoded(body):
    return np.asarray(Image.open(io.BytesIO(body)))


def run_clients(server, jobs, clients):
    """Send every (file, seed) of jobs from `clients` threads; returns [(status, headers, body)] in job order."""
    def send(job):
        src, seed = job
        return server.upscale(src.read_bytes(), f"?seed={seed}")

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, jobs))


def test_load_answers_equal_the_cli_images(serve, images, cli_images):
    """16 clients, 200 requests of 3 sizes and 5 seeds: every answer has the CLI's pixels, each request is
    answered once, and requests were batched."""
    server = serve("--max-batch", "8", "--max-wait-ms", "20")
    jobs = [(images[i % len(images)], i % 5) for i in range(200)]
    answers = run_clients(server, jobs, clients=16)
    for (src, seed), (status, headers, body) in zip(jobs, answers):
        assert status == 200, body
        assert headers["content-type"] == "image/png"
        assert_cli_image(decoded(body), cli_images[src, seed], batched=True)
    assert server.metric('ecdp_requests_total{status="200"}') == 200
    assert server.metric("ecdp_images_total") == 200
    batches = server.metric("ecdp_batch_size_count")
    assert server.metric("ecdp_batch_size_sum") == 200 and batches < 200, "no request was batched"


def test_a_flood_past_the_queue_gets_503_and_loses_nothing(serve, images, cli_images):
    """40 requests at once at a queue of 4: each gets exactly one answer, the image or a 503 with
    Retry-After; the refused ones succeed when sent again. Unbatched, so each image is exactly the CLI's."""
    server = serve("--max-batch", "1", "--queue", "4")
    jobs = [(images[i % len(images)], i % 5) for i in range(40)]
    answers = run_clients(server, jobs, clients=40)
    refused = [job for job, (status, _, _) in zip(jobs, answers) if status == 503]
    assert refused, "the flood never filled the queue"
    for (src, seed), (status, headers, body) in zip(jobs, answers):
        assert status in (200, 503), body
        if status == 503:
            assert int(headers["retry-after"]) >= 1
            assert set(json.loads(body)) == {"error"}
        else:
            assert_cli_image(decoded(body), cli_images[src, seed], batched=False)
    assert server.metric('ecdp_requests_total{status="200"}') + server.metric('ecdp_requests_total{status="503"}') == 40
    for (src, seed), (status, _, body) in zip(refused, run_clients(server, refused, clients=1)):
        assert status == 200, body
        assert_cli_image(decoded(body), cli_images[src, seed], batched=False)


def test_a_client_that_leaves_does_not_stall_its_batch(serve, images, cli_images):
    """A client that sends its image and hangs up leaves the queue at once; the requests it would have
    been batched with are answered, and the service goes on."""
    server = serve("--max-batch", "4", "--max-wait-ms", "1500")
    src = images[0]
    body = src.read_bytes()
    with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_S) as leaving:
        leaving.sendall(b"POST /v1/upscale?seed=1 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + ANSWER_S
        while server.metric("ecdp_queue_depth") < 1:   # it waits for 3 more of its size
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + ANSWER_S
    while server.metric('ecdp_requests_total{status="499"}') < 1:
        assert time.monotonic() < deadline, "the service did not notice the client leave"
        time.sleep(0.05)
    assert server.metric("ecdp_queue_depth") == 0
    jobs = [(src, seed) for seed in (2, 3, 4, 0)]   # a full batch of the same size
    for (src, seed), (status, _, body) in zip(jobs, run_clients(server, jobs, clients=4)):
        assert status == 200, body
        assert_cli_image(decoded(body), cli_images[src, seed], batched=True)


def test_sigterm_drains_the_queue_and_exits_0(serve, images, cli_images):
    """SIGTERM while six requests wait for their batch (30 s): each gets its image at once, then the
    process exits 0 and accepts no more connections."""
    server = serve("--max-batch", "8", "--max-wait-ms", "30000")
    jobs = [(images[0], seed) for seed in range(5)] + [(images[1], 0)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run_clients, server, jobs, 6)
        deadline = time.monotonic() + ANSWER_S
        while server.metric("ecdp_queue_depth") < len(jobs):
            assert time.monotonic() < deadline, "the requests did not reach the queue"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        answers = pending.result(timeout=20)
    for (src, seed), (status, _, body) in zip(jobs, answers):
        assert status == 200, body
        assert_cli_image(decoded(body), cli_images[src, seed], batched=True)
    assert server.process.wait(timeout=ANSWER_S) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def png_claiming(width, height):
    """A valid PNG header and a few bytes of data for a width x height 8-bit gray image: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def nan_tiff():
    import tifffile

    array = np.full((8, 8), 0.5, np.float32)
    array[3, 4] = np.nan
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def test_bad_bodies_get_one_sentence_and_the_service_keeps_serving(serve, images, cli_images):
    server = serve("--max-body-mb", "1", "--max-pixels", "100000", "--max-batch", "1")
    good = images[0].read_bytes()
    bad = {
        "empty": (b"", "", 400),
        "truncated": (good[: len(good) // 2], "", 400),
        "text": (b"a plain sentence, not an image\n", "", 400),
        "bomb": (png_claiming(50000, 50000), "", 413),
        "NaN float TIFF": (nan_tiff(), "", 400),
        "body over the limit": (bytes(2 * 2**20), "", 413),
        "unknown format": (good, "?format=xyz", 400),
        "too many steps": (good, "?steps=100000", 400),
        "unknown parameter": (good, "?sed=1", 400),
    }
    for name, (body, query, expected) in bad.items():
        status, headers, answer = server.upscale(body, query)
        assert status == expected, (name, answer)
        assert headers["content-type"] == "application/json", name
        message = json.loads(answer)
        assert list(message) == ["error"] and message["error"] and "\n" not in message["error"], (name, message)
        status, _, answer = server.upscale(good, "?seed=2")
        assert status == 200, (name, answer)
        assert_cli_image(decoded(answer), cli_images[images[0], 2], batched=False)


def test_health_readiness_metrics_and_the_timeout(serve, images):
    """/healthz, /readyz and /metrics answer; a request left waiting past --timeout-s gets 504 and
    leaves the queue."""
    server = serve("--timeout-s", "0.5", "--max-wait-ms", "20000")
    assert server.get("/healthz") == (200, b'{"status":"alive"}')
    assert server.get("/readyz") == (200, b'{"status":"ready"}')
    start = time.monotonic()
    status, headers, body = server.upscale(images[0].read_bytes())   # waits for 7 more of its size
    assert status == 504 and list(json.loads(body)) == ["error"]
    assert time.monotonic() - start < 10
    text = server.get("/metrics")[1].decode()
    for name in ("ecdp_requests_total", "ecdp_queue_depth", "ecdp_batch_size_bucket", "ecdp_request_seconds_bucket",
                 "ecdp_images_total"):
        assert name in text
    assert server.metric('ecdp_requests_total{status="504"}') == 1
    assert server.metric("ecdp_queue_depth") == 0


def test_a_model_that_cannot_be_loaded_exits_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ecdp", "serve", "--checkpoint", str(tmp_path / "none"),
                             "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=START_S)
    assert result.returncode == 1
    assert "ecdp serve: error: the model cannot be loaded: " in result.stderr


def test_each_image_of_a_batch_draws_its_own_seeds_noise(model):
    """Upscaler.sample(seeds=...): a batch of one is the image sampled alone with that seed; in a larger
    batch each image's result is that image's, whatever it is batched with, to float rounding."""
    upscaler = Upscaler.from_pretrained(str(model), engine="reference")
    y = torch.rand(4, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    with one_thread():
        alone = [Upscaler(upscaler.resolver, seed=s).sample(y[i:i + 1]) for i, s in enumerate((7, 8, 9, 10))]
        assert torch.equal(upscaler.sample(y[:1], seeds=[7]), alone[0])
        batch = upscaler.sample(y, seeds=[7, 8, 9, 10])
        other = Upscaler(upscaler.resolver, seed=8).sample(y[:1])
    for i in range(4):
        torch.testing.assert_close(batch[i:i + 1], alone[i], rtol=0, atol=1e-5)
    assert not torch.allclose(alone[0], other)
    with pytest.raises(ValueError, match="one seed per image"):
        upscaler.sample(y, seeds=[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_batched_image_is_within_float_rounding_of_the_image_alone(model, threads):
    """Batches of 2 and 3 give each image its pixels alone to less than 1/255 (see assert_cli_image:
    the CPU kernels split their work by batch size and threads, so the rounding moves)."""
    upscaler = Upscaler.from_pretrained(str(model))
    y = torch.rand(3, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    seeds = [5, 6, 7]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = torch.cat([upscaler.sample(y[i:i + 1], seeds=seeds[i:i + 1]) for i in range(3)])
        for size in (2, 3):
            batched = upscaler.sample(y[:size], seeds=seeds[:size])
            assert (batched - alone[:size]).abs().max() < 1 / 255, f"batch of {size}"
    finally:
        torch.set_num_threads(before)


def run_batcher(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_batcher_groups_by_key_up_to_the_capacity_and_waits_at_most_max_wait():
    batches = []

    def run(payloads):
        batches.append(payloads)
        return [p * 10 for p in payloads]

    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, max_batch=3, max_wait_s=0.2, queue_size=10, executor=executor,
                              capacity=lambda key: 2 if key == "big" else 3)
            serving = asyncio.create_task(batcher.serve())
            start = time.monotonic()
            futures = [batcher.submit(key, p) for key, p in (("a", 1), ("b", 2), ("a", 3), ("big", 4),
                                                             ("a", 5), ("big", 6), ("big", 7), ("a", 8))]
            results = await asyncio.gather(*futures)
            waited = time.monotonic() - start
            batcher.close()
            await serving
            return results, waited

    results, waited = run_batcher(scenario())
    assert results == [10, 20, 30, 40, 50, 60, 70, 80]
    assert batches == [[1, 3, 5], [2], [4, 6], [7], [8]]   # oldest first; full batches go at once
    assert waited < 2   # three partial batches, each after at most 0.2 s


def test_batcher_refuses_past_its_queue_and_frees_the_place_of_a_cancelled_job():
    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            batcher = Batcher(lambda payloads: payloads, max_batch=4, max_wait_s=60, queue_size=2, executor=executor)
            serving = asyncio.create_task(batcher.serve())
            first, second = batcher.submit("k", 1), batcher.submit("k", 2)
            with pytest.raises(QueueFull):
                batcher.submit("k", 3)
            first.cancel()
            await asyncio.sleep(0)
            third = batcher.submit("k", 3)
            assert batcher.depth == 2
            batcher.close()   # the drain runs the waiting jobs at once, without their wait
            await serving
            return await asyncio.gather(second, third)

    assert run_batcher(scenario()) == [2, 3]


@pytest.mark.slow
def test_ray_serve_answers_with_the_same_images(model, images, cli_images):
    """The Ray Serve deployment, two CPU replicas on a local Ray instance, answers as ``ecdp serve`` does."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from ecdp.serve.service import Settings
    from ecdp.serve.ray_serve import deployment

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(checkpoint=str(model), max_batch=4, max_wait_ms=20)
        serve.run(deployment(settings, replicas=2), route_prefix="/")
        replicas = serve.status().applications["default"].deployments["UpscaleDeployment"].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        server = Server.__new__(Server)   # the client side of Server, on Ray Serve's proxy
        server.port = port
        assert server.get("/readyz")[0] == 200
        jobs = [(images[i % len(images)], i % 5) for i in range(24)]
        for (src, seed), (status, _, body) in zip(jobs, run_clients(server, jobs, clients=8)):
            assert status == 200, body
            assert_cli_image(decoded(body), cli_images[src, seed], batched=True)
        status, _, body = server.upscale(b"")
        assert status == 400 and list(json.loads(body)) == ["error"]
    finally:
        serve.shutdown()
        ray.shutdown()
    from ecdp.serve import app   # what ``serve run ecdp.serve:app`` runs: the built-in model, one replica off GPUs
    assert type(app).__name__ == "Application"
