"""``ecdp serve``: the upscaling HTTP service (uvicorn), or the same service as a Ray Serve deployment."""
import argparse
import signal
import sys

from ecdp.choices import MAX_PIXELS
from ecdp.commands import add_speed_arguments, positive_int

EPILOG = """\
POST /v1/upscale with an image file as the body (any format ecdp upscale reads) and the query
parameters seed, solver, steps, grid, format (an extension: png, jpg, webp, tif, ...; default: the
input's) and quality; the answer is the upscaled file, with the pixels and metadata ecdp upscale
gives for the same file and seed. GET /healthz (alive), /readyz (model loaded and warmed),
/metrics (Prometheus). Requests of the same LR size and sampler run as one batch. SIGTERM stops
accepting, finishes what is queued and exits with status 0.
"""


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve upscaling over HTTP, with dynamic batching", epilog=EPILOG,
                              description="An HTTP service that upscales images with an ECDP model.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="PATH", default="default",
                   help="model folder (model.safetensors and config.json); default: the built-in model")
    add_speed_arguments(p)
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads for the network (default: one per core)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port to bind (default: 8000)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="the most images solved together (default: 8)")
    p.add_argument("--max-wait-ms", type=_non_negative, default=5.0, metavar="MS",
                   help="how long a request may wait for others to share its batch (default: 5)")
    p.add_argument("--queue", type=positive_int, default=64, metavar="N",
                   help="the most requests waiting; more get 503 with Retry-After (default: 64)")
    p.add_argument("--timeout-s", type=_positive, default=60.0, metavar="S",
                   help="a request not answered within S seconds gets 504 (default: 60)")
    p.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images of more than N pixels with 413 (default: {MAX_PIXELS:,})")
    p.add_argument("--max-body-mb", type=positive_int, default=64, metavar="MB",
                   help="refuse request bodies of more than MB MiB with 413 (default: 64)")
    p.add_argument("--ray", action="store_true",
                   help="run as a Ray Serve deployment (pip install 'ecdp[ray]'): one replica per GPU")
    p.add_argument("--replicas", type=positive_int, metavar="N",
                   help="Ray Serve replicas (default: one per GPU of the Ray cluster, or 1 without GPUs)")
    p.set_defaults(run=run)


def run(args):
    import torch

    _require(("uvicorn", "starlette", "prometheus_client"), "serve")
    if args.ray:
        _require(("ray",), "ray")
    from ecdp.serve.service import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(checkpoint=args.checkpoint, engine=args.engine, precision=args.precision, compile=args.compile,
                        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                        timeout_s=args.timeout_s, max_pixels=args.max_pixels, max_body_mb=args.max_body_mb)
    if args.ray:
        from ecdp.serve.ray_serve import run_ray

        return run_ray(settings, host=args.host, port=args.port, replicas=args.replicas)
    return serve_http(settings, args.host, args.port)


def serve_http(settings, host: str, port: int) -> int:
    """Run the service on uvicorn until SIGTERM or SIGINT; 0 after a drain, 1 when the model failed to load."""
    import uvicorn

    from ecdp.serve.service import create_app

    failure = []

    def load_failed(message):
        print(f"ecdp serve: error: {message}", file=sys.stderr, flush=True)
        failure.append(message)
        server.should_exit = True

    app = create_app(settings, on_load_error=load_failed)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM or SIGINT the queued requests run at once, while uvicorn stops accepting and
        waits for the requests in flight."""

        def handle_exit(self, sig, frame):
            app.state.service.drain_soon()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=settings.timeout_s + 5)
    server = DrainingServer(config)
    # uvicorn raises the signal it caught again once it has drained; this handler makes that a no-op,
    # so that a SIGTERM ends the process with status 0 after the drain.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if failure or not server.started else 0


def _require(modules, extra):
    """UserError naming the extra to install unless every module can be imported."""
    import importlib.util

    from ecdp.errors import UserError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ecdp serve{' --ray' if extra == 'ray' else ''} needs {', '.join(missing)}: "
                        f"pip install 'ecdp[{extra}]'")


def _port(text):
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return int(text)


def _positive(text):
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value
