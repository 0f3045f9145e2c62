"""The upscaling service: ``ecdp serve`` (uvicorn), or a Ray Serve deployment (``serve run ecdp.serve:app``).

- ``batching``: the dynamic batcher (a bounded queue; batches of one key, full or after a short wait).
- ``codec``: a request's options, the image in its body and the image in its answer.
- ``models``: the model side: an Upscaler per sampler, batches of same-size images, each with its seed.
- ``service``: the HTTP routes, metrics, readiness and the drain at shutdown (Starlette).
- ``ray_serve``: the same service as Ray Serve replicas, one per GPU.

``app`` (the Ray Serve application, with the built-in model on every GPU of the Ray cluster) is
made on first access, so importing this package needs neither Ray nor torch.
"""


def __getattr__(name):
    if name == "app":
        from ecdp.serve.ray_serve import application

        return application({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
