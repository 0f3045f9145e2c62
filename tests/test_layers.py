"""The call chain of the README's "Layers": what `ecdp upscale` runs between its main and the network."""
import inspect

import pytest
from PIL import Image

import ecdp.nets
from ecdp.cli import main
from helpers import random_uint8, save_tiny_model

CHAIN = ["main", "run", "Upscaler.sample", "SuperResolver.run", "solve", "heun_step", "drift_fn.<locals>.drift",
         "HybridDenoiser.__call__"]
"""Every frame of ecdp's own code from the command's main to the network, outermost first, as the README gives them."""
MOST_FRAMES = 8


def _our_frames():
    """The qualified name of every frame of ecdp's code on the stack, outermost first."""
    stack = reversed(inspect.stack()[2:])
    return [f.frame.f_code.co_qualname for f in stack if f.frame.f_globals.get("__name__", "").startswith("ecdp.")]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_ecdp_upscale_reaches_the_network_in_at_most_eight_frames(tmp_path, monkeypatch, engine):
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
    print(f"{engine}: {len(stacks[0])} frames: {' -> '.join(stacks[0])} -> UNet.forward")
    assert stacks[0] == CHAIN and len(CHAIN) <= MOST_FRAMES
