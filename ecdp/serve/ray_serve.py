"""The service as a Ray Serve deployment: replicas of the same batching service, one per GPU.

Each replica is a ``Service`` (its own model, batcher and metrics); Ray Serve's proxy spreads the
requests over them. On GPUs each replica holds one (``num_gpus=1``: Ray sets its
CUDA_VISIBLE_DEVICES, so its device is "cuda"); on CPUs each holds ``cpus`` cores.
"""
import asyncio
import dataclasses
import signal
import threading

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from ecdp.serve.service import Service, Settings, error


@serve.deployment(max_ongoing_requests=256)
class UpscaleDeployment:
    """One replica: a Service whose routes are those of ``ecdp serve``. The model is loaded and
    warmed when the replica starts, so Ray routes requests to it only once it is ready."""

    def __init__(self, settings: Settings):
        self.service = Service(settings)
        self.service.models.load((1, settings.max_batch))
        self._started: asyncio.Task | None = None
        self.routes = {("POST", "/v1/upscale"): self._upscale, ("GET", "/healthz"): self.service.healthz,
                       ("GET", "/readyz"): self.service.readyz, ("GET", "/metrics"): self.service.metrics_page}

    async def __call__(self, request: Request) -> Response:
        if self._started is None:
            self._started = asyncio.ensure_future(self.service.start(load=False))
        await self._started
        route = self.routes.get((request.method, request.url.path.rstrip("/") or "/"))
        if route is None:
            return error(404, f"no route {request.method} {request.url.path}")
        return await route(request)

    async def _upscale(self, request):
        return await self.service.upscale(request, watch_disconnect=False)   # Ray cancels a call whose client left


def deployment(settings: Settings, replicas: int | None = None, cpus: float = 1):
    """The Ray Serve application of `settings`: `replicas` replicas (default: one per GPU of the
    connected Ray cluster, or 1 without GPUs), each pinned to one GPU when settings.device is CUDA."""
    on_gpu = settings.device.startswith("cuda")
    if replicas is None:
        replicas = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() and on_gpu else 0
        replicas = replicas or 1
    options = {"num_gpus": 1} if on_gpu else {"num_cpus": cpus}
    settings = dataclasses.replace(settings, device="cuda") if on_gpu else settings
    return UpscaleDeployment.options(num_replicas=replicas, ray_actor_options=options).bind(settings)


def application(args: dict):
    """The application of ``serve run ecdp.serve:app`` (built-in model; CUDA where the driver sees a GPU),
    or, as an application builder, of ``serve run ecdp.serve.ray_serve:application key=value ...`` with
    the keys of Settings and `replicas`."""
    import torch

    args = dict(args)
    replicas = int(args.pop("replicas")) if "replicas" in args else None
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; the options are {', '.join(fields)}, replicas")
    defaults = Settings(device="cuda" if torch.cuda.is_available() else "cpu")
    values = {k: type(getattr(defaults, k) if getattr(defaults, k) is not None else "")(v) for k, v in args.items()}
    return deployment(dataclasses.replace(defaults, **values), replicas)


def run_ray(settings: Settings, *, host: str, port: int, replicas: int | None = None) -> int:
    """Start (or join, with RAY_ADDRESS) a Ray cluster, run the deployment behind Ray Serve's proxy on
    host:port, and wait for SIGTERM or SIGINT; then shut the application down and return 0."""
    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(settings, replicas), route_prefix="/", blocking=False)
    print(f"ecdp serve: Ray Serve on http://{host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0
