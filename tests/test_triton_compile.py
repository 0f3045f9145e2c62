"""The Triton kernels compile for sm_90 in the test process itself (no GPU or driver needed), and the
slab GroupNorm is an operator that compiled code keeps.

pytest runs this module after test_kernels.py, whose interpreted tests ran in a subprocess
(tests/conftest.py): this shows that they left Triton compiled here.
"""
import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

# importing triton_gn_nhwc registers its operator
from ecdp.kernels import triton_gn, triton_gn_nhwc, triton_ode  # noqa: E402,F401

SM90 = GPUTarget("cuda", 90, 32)


def _compile(fn, types, constexprs):
    """triton.compile of `fn` for sm_90; types: {parameter: Triton type}, the rest constexprs."""
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    return triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=SM90)


def test_triton_library_is_compiled_here():
    from triton.runtime.interpreter import InterpretedFunction
    assert not isinstance(triton.language.sum, InterpretedFunction)


def test_group_norm_kernel_compiles_for_sm90():
    types = {name: "*bf16" for name in ("x_ptr", "ach_ptr", "add_ptr", "out_ptr")}
    types.update(w_ptr="*fp32", bias_ptr="*fp32", eps="fp32")
    types.update({name: "i32" for name in ("S", "G", "CG", "n_gblocks", "sxb", "sxc", "sxs", "sab", "sac",
                                           "sdb", "sdc", "sds", "sob", "soc", "sos")})
    kernel = _compile(triton_gn._gn_fused, types, dict(HAS_ACH=True, HAS_ADD=True, SILU=True, BLOCK_G=1,
                                                       BLOCK_CG=2, BLOCK_S=4096, OFFSET64=False))
    assert kernel.asm["cubin"] and ".target sm_90" in kernel.asm["ptx"]


def test_ode_kernel_compiles_for_sm90():
    fn = triton_ode._ode_update
    types = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    types.update({name: "i32" for name in fn.arg_names if name in ("S", "scoef") or name.startswith("s") and len(name) == 3})
    kernel = _compile(fn, types, dict(HAS_BASE=True, HAS_ACC=True, WRITE_ACC=True, BLOCK=1024,
                                      OFFSET64=True))
    assert kernel.asm["cubin"] and ".target sm_90" in kernel.asm["ptx"]


def test_slab_group_norm_is_an_operator_compiled_code_keeps():
    """ecdp::group_norm_silu_nhwc traces as one node between the ops around it (torch.export's graph,
    what torch.compile sees): no graph break, and the output takes x's layout on fake tensors."""

    class Block(torch.nn.Module):
        def forward(self, x, weight, bias, add):
            return torch.ops.ecdp.group_norm_silu_nhwc(x * 2, weight, bias, 3, add=add) + 1

    x = torch.randn(2, 12, 5, 7).to(memory_format=torch.channels_last)
    graph = torch.export.export(Block(), (x, torch.randn(12), torch.randn(12), torch.randn(2, 12, 5, 7))).graph
    targets = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert targets == ["aten.mul.Tensor", "ecdp.group_norm_silu_nhwc.default", "aten.add.Tensor"]
    out = [node for node in graph.nodes if str(node.target) == "ecdp.group_norm_silu_nhwc.default"][0].meta["val"]
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
