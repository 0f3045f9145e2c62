"""The call chain of the README's "Layers": what `ecdp upscale` runs between the command and the network."""
import inspect

import pytest
from PIL import Image

import ecdp.nets
from ecdp.cli import main
from test_upscaler import random_uint8, save_tiny_model

LAYERS = ["upscale_file", "Upscaler.sample", "SuperResolver.run", "solve", "HybridDenoiser.__call__"]
"""The five calls between layers, in order, as the README gives them."""
WITHIN = {"Upscaler._solve_region", "FastResolver.latent", "FastResolver._solve", "SuperResolver.latent", "heun_step",
          "drift_fn.<locals>.drift", "FastDenoiser.forward", "ECDPNet.forward"}
"""The other frames of ecdp's own code on the stack: helpers inside those layers."""


def _our_frames():
    """(qualified name) of every ecdp frame on the stack, outermost first."""
    names = []
    for frame in reversed(inspect.stack()[2:]):
        module = frame.frame.f_globals.get("__name__", "")
        if module.startswith("ecdp.") and "ecdp.cli" != module:
            names.append(frame.frame.f_code.co_qualname)
    return names


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_ecdp_upscale_reaches_the_network_through_the_layers_of_the_readme(tmp_path, monkeypatch, engine):
    model = save_tiny_model(tmp_path / "model", solver="heun", steps=1)
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    stacks, forward = [], ecdp.nets.UNet.forward

    def recorded(self, *args):
        stacks.append(_our_frames())
        return forward(self, *args)

    monkeypatch.setattr(ecdp.nets.UNet, "forward", recorded)
    args = ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--checkpoint", str(model),
            "--engine", engine, "-q"]
    assert main(args) == 0
    frames = [name for name in stacks[0] if name not in ("run", "main")]   # the command's own entry
    assert [name for name in frames if name in LAYERS] == LAYERS
    assert set(frames) - set(LAYERS) <= WITHIN, set(frames) - set(LAYERS) - WITHIN
