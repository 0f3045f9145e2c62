"""The HTTP service: ``POST /v1/upscale``, ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

``Service`` holds the model, the batcher and the metrics, and answers Starlette requests; ``create_app``
mounts it on a Starlette app whose lifespan loads the model (in the background: /healthz answers at
once, /readyz once the model is loaded and warmed) and, at shutdown, lets every queued request
finish. Errors are JSON ``{"error": "<one sentence>"}``: 400 a bad image or option, 413 a body or
image too large, 503 (with Retry-After) not ready or the queue full, 504 past the timeout.
"""
import asyncio
import concurrent.futures
import contextlib
import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ecdp.choices import DEFAULT_ENGINE, MAX_PIXELS
from ecdp.errors import UserError
from ecdp.serve.batching import Batcher, QueueFull
from ecdp.serve.codec import RequestError, decode, encode, media_type, parse_options
from ecdp.serve.models import Models, Work

RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class Settings:
    """The service's options (those of ``ecdp serve``)."""

    checkpoint: str = "default"
    device: str = "cpu"
    engine: str = DEFAULT_ENGINE  # the Speed's options, as on ecdp upscale (ecdp.speed.Speed.choose)
    precision: str = "auto"
    compile: bool = False
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue: int = 64
    timeout_s: float = 60.0
    max_pixels: int = MAX_PIXELS
    max_body_mb: int = 64


class Metrics:
    """The Prometheus metrics of one service, in a registry of their own."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("ecdp_requests", "Upscale requests answered, by HTTP status (499: the client left)",
                                ["status"], registry=self.registry)
        self.queue_depth = Gauge("ecdp_queue_depth", "Requests waiting for a batch", registry=self.registry)
        self.batch_size = Histogram("ecdp_batch_size", "Images per batch", registry=self.registry,
                                    buckets=[n for n in (1, 2, 4, 8, 16, 32, 64) if n < max_batch] + [max_batch])
        self.latency = Histogram("ecdp_request_seconds", "Time from a request's arrival to its answer, in seconds",
                                 ["status"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.images = Counter("ecdp_images", "Images upscaled; their rate is the images per second",
                              registry=self.registry)


class Service:
    """One model behind a dynamic batcher, answering Starlette requests (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = Models(settings.checkpoint, device=settings.device, engine=settings.engine,
                             precision=settings.precision, compile=settings.compile)
        self.metrics = Metrics(settings.max_batch)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ecdp-model")
        self.batcher: Batcher | None = None
        self.ready = False
        self.load_error: str | None = None
        self._serving: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, load: bool = True) -> None:
        """Start the batcher, after loading and warming the model in the model thread (unless load is
        False: it was loaded already). A model that cannot be loaded leaves the service not ready,
        its reason in load_error, and raises."""
        self.batcher = Batcher(self.models.run, max_batch=self.settings.max_batch,
                               max_wait_s=self.settings.max_wait_ms / 1000, queue_size=self.settings.queue,
                               executor=self.executor, capacity=self.models.capacity,
                               on_batch=self._on_batch)
        loop = self._loop = asyncio.get_running_loop()
        try:
            if load:
                await loop.run_in_executor(self.executor, self.models.load, (1, self.settings.max_batch))
        except Exception as e:
            self.load_error = f"the model cannot be loaded: {e}"
            raise
        self._serving = asyncio.create_task(self.batcher.serve())
        self.ready = True

    def drain(self) -> None:
        """Stop taking requests (503, not ready) and run the queued ones without waiting to fill batches."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()

    def drain_soon(self) -> None:
        """drain() on the service's event loop; may be called from any thread or a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain)

    async def stop(self) -> None:
        """Finish every queued request, then stop the batcher and the model thread."""
        self.drain()
        if self._serving is not None:
            await self._serving
        self.executor.shutdown(wait=True)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready"})
        reason = self.load_error or "the model is loading"
        return JSONResponse({"status": "not ready", "error": reason}, status_code=503)

    async def metrics_page(self, request: Request) -> Response:
        if self.batcher is not None:
            self.metrics.queue_depth.set(self.batcher.depth)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def upscale(self, request: Request, *, watch_disconnect: bool = True) -> Response:
        """POST /v1/upscale: the body an image file, the query its options; the answer the upscaled file.

        watch_disconnect: drop the request from the queue as soon as its client leaves (under
        uvicorn; Ray Serve cancels the handler itself).
        """
        arrived = time.monotonic()
        try:
            answer = await self._answer(request, arrived, watch_disconnect)
        except RequestError as e:
            answer = error(e.status, str(e))
        self._count(answer.status_code, arrived)
        return answer

    async def _answer(self, request, arrived, watch_disconnect):
        if not self.ready:
            reason = "the service is shutting down" if self.batcher and self._serving else "the model is still loading"
            raise RequestError(503, self.load_error or f"{reason}; retry shortly")
        options = parse_options(request.query_params)
        body = await self._body(request)
        if self.batcher.depth >= self.settings.queue:   # refused before the cost of decoding it
            raise RequestError(503, "the queue is full; retry shortly")
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(None, decode, body, options, self.settings.max_pixels)
        try:
            work = Work(decoded.rgb, options.seed, self.models.sampler(options.solver, options.steps, options.grid))
            future = self.batcher.submit(self.models.key(work), work)
        except UserError as e:
            raise RequestError(400, str(e)) from None
        except QueueFull:
            raise RequestError(503, "the queue is full; retry shortly") from None
        except RuntimeError:   # closing: shutdown began after this request arrived
            raise RequestError(503, "the service is shutting down") from None
        remaining = arrived + self.settings.timeout_s - time.monotonic()
        try:
            sr = await self._result(future, request, remaining, watch_disconnect)
        finally:
            future.cancel()   # no-op once done; frees the queue place of a request given up
        self.metrics.images.inc()
        data = await loop.run_in_executor(None, encode, decoded, sr, options.quality)
        return Response(data, media_type=media_type(decoded.fmt))

    async def _body(self, request):
        """The request body, refused with 413 past max_body_mb without reading it all."""
        limit = self.settings.max_body_mb * 2**20
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the body is {int(declared):,} bytes, more than the limit of {limit:,}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"the body is more than the limit of {limit:,} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError(499, "the client closed the connection") from None
        return b"".join(chunks)

    async def _result(self, future, request, timeout, watch_disconnect):
        """The batch's result for this request; RequestError 504 past the timeout, 499 when the client
        leaves first (an answer nobody receives)."""
        waiters = {future}
        if watch_disconnect:
            waiters.add(asyncio.ensure_future(_disconnected(request)))
        try:
            done, _ = await asyncio.wait(waiters, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters - {future}:
                waiter.cancel()
        if future in done:
            try:
                return future.result()
            except Exception as e:   # the model failed (out of memory, non-finite values): the whole batch
                raise RequestError(500, str(e) or type(e).__name__) from None
        if done:
            raise RequestError(499, "the client closed the connection")
        raise RequestError(504, f"no answer within the timeout of {self.settings.timeout_s:g} s")

    def _on_batch(self, size):
        self.metrics.batch_size.observe(size)
        self.metrics.queue_depth.set(self.batcher.depth)

    def _count(self, status, arrived):
        self.metrics.requests.labels(status=str(status)).inc()
        self.metrics.latency.labels(status=str(status)).observe(time.monotonic() - arrived)


async def _disconnected(request):
    """Return once the client has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error(status: int, message: str) -> JSONResponse:
    """The JSON error answer; 503 carries Retry-After."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(settings: Settings, on_load_error: Callable[[str], None] | None = None) -> Starlette:
    """The Starlette app of a Service of these settings; its lifespan starts and drains the service.

    on_load_error(message), when given, is called if the model cannot be loaded (the service then
    stays alive and not ready).
    """
    service = Service(settings)

    def loaded(task):
        if not task.cancelled() and task.exception() is not None and on_load_error:
            on_load_error(service.load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loading = asyncio.create_task(service.start())
        loading.add_done_callback(loaded)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await loading
            await service.stop()

    app = Starlette(routes=[Route("/v1/upscale", service.upscale, methods=["POST"]),
                            Route("/healthz", service.healthz), Route("/readyz", service.readyz),
                            Route("/metrics", service.metrics_page)], lifespan=lifespan)
    app.state.service = service
    return app
