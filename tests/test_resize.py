"""Tests of ecdp.resize against an independent MATLAB-imresize reference written here."""
import io
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ecdp.resize import downscale, mod_crop, resize, resize_matrix, upscale


# ---------------------------------------------------------------------------------------------
# Independent float64 reference: MATLAB imresize 'bicubic', one output pixel at a time.
# ---------------------------------------------------------------------------------------------
def _keys(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _fold(j, n):
    """Symmetric mirroring of a 1-based index into 1..n (edge pixel repeated)."""
    while j < 1 or j > n:
        j = 1 - j if j < 1 else 2 * n + 1 - j
    return j


def _contributions(i, in_len, out_len):
    """0-based input indices and normalized weights of 1-based output pixel ``i``."""
    scale = out_len / in_len
    if scale < 1:  # antialiasing: h(x) = s * cubic(s * x), kernel width 4 / s
        kernel, width = (lambda x: scale * _keys(scale * x)), 4 / scale
    else:
        kernel, width = _keys, 4
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = math.floor(u - width / 2)
    taps = [left + k for k in range(math.ceil(width) + 2)]
    weights = [kernel(u - j) for j in taps]
    total = sum(weights)
    return [_fold(j, in_len) - 1 for j in taps], [w / total for w in weights]


def _reference(img, out_h, out_w):
    """img: (..., H, W) float64 numpy array."""
    in_h, in_w = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (out_h, out_w))
    for r in range(out_h):
        rows, wr = _contributions(r + 1, in_h, out_h)
        for c in range(out_w):
            cols, wc = _contributions(c + 1, in_w, out_w)
            acc = np.zeros(img.shape[:-2])
            for y, a in zip(rows, wr):
                for x, b in zip(cols, wc):
                    acc += a * b * img[..., y, x]
            out[..., r, c] = acc
    return out


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_hw, out_hw",
    [((8, 6), (16, 12)), ((7, 5), (21, 15)), ((6, 9), (24, 36)),  # up x2, x3, x4
     ((16, 12), (8, 6)), ((32, 24), (8, 6)),  # down x2, x4
     ((17, 17), (40, 40)), ((40, 40), (17, 17)), ((17, 40), (40, 17))],  # non-integer
)
def test_constant_stays_constant(in_hw, out_hw):
    img = torch.full((2, 3) + in_hw, 0.37, dtype=torch.float64)
    out = resize(img, out_hw)
    assert out.shape == (2, 3) + out_hw
    torch.testing.assert_close(out, torch.full_like(out, 0.37), rtol=0, atol=1e-12)


def test_same_size_is_identity():
    img = torch.rand(2, 3, 13, 9)
    torch.testing.assert_close(resize(img, (13, 9)), img, rtol=0, atol=1e-6)
    torch.testing.assert_close(upscale(img, 1), img, rtol=0, atol=1e-6)
    torch.testing.assert_close(downscale(img, 1), img, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "in_hw, out_hw",
    [((6, 5), (24, 20)), ((32, 28), (8, 7)), ((11, 17), (7, 40)), ((3, 2), (1, 5))],
)
def test_matches_independent_reference(in_hw, out_hw):
    rng = np.random.default_rng(0)
    img = rng.random((2,) + in_hw)
    expected = _reference(img, *out_hw)
    got = resize(torch.from_numpy(img), out_hw).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_known_matlab_weights_upscale_x2():
    # imresize(v, 2, 'bicubic'): odd output pixel 2k+1 (1-based) sits at u = k + 0.75 and takes
    # inputs k-1..k+2 with these weights; even pixel 2k (u = k + 0.25) takes the reverse order.
    phase = np.array([-0.0234375, 0.2265625, 0.8671875, -0.0703125])
    a = resize_matrix(10, 20, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(a[8, 2:6], phase)  # output 9 (k = 4): inputs 3..6
    np.testing.assert_array_equal(a[9, 3:7], phase[::-1])  # output 10 (k = 5): inputs 4..7
    assert np.count_nonzero(a[8]) == 4 and np.count_nonzero(a[9]) == 4
    # Left border: output 1 (u = 0.75) taps inputs -1, 0, 1, 2 mirrored to 2, 1, 1, 2.
    np.testing.assert_array_equal(a[0, :3], [phase[1] + phase[2], phase[0] + phase[3], 0.0])
    # A linear ramp stays linear in the interior: output j sits at u = j/2 + 1/4.
    ramp = torch.arange(1, 11, dtype=torch.float64)
    up = (resize_matrix(10, 20, dtype=torch.float64) @ ramp).numpy()
    j = np.arange(1, 21)
    np.testing.assert_allclose(up[3:-3], (j / 2 + 0.25)[3:-3], rtol=0, atol=1e-12)


def test_known_matlab_weights_downscale_x2():
    # imresize(v, 0.5, 'bicubic'): u = 2j - 0.5, kernel width 8, weights cubic(x / 2) normalized
    # (the sum of cubic(x / 2) over the 8 taps is 2, so each weight is half the kernel value).
    # Output 5 (u = 9.5) takes 1-based inputs 6..13.
    a = resize_matrix(20, 10, dtype=torch.float64).numpy()
    expected = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875]) / 2
    np.testing.assert_array_equal(a[4, 5:13], np.concatenate([expected, expected[::-1]]))


def test_downscale_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        downscale(torch.zeros(1, 3, 10, 12), 4)
    with pytest.raises(ValueError, match="divisible"):
        downscale(torch.zeros(12, 10), 4)


def test_upscale_downscale_shapes_and_mod_crop():
    x = torch.rand(2, 3, 19, 22)
    cropped = mod_crop(x, 4)
    assert cropped.shape == (2, 3, 16, 20)
    assert torch.equal(cropped, x[..., :16, :20])
    y = downscale(cropped, 4)
    assert y.shape == (2, 3, 4, 5)
    assert upscale(y, 4).shape == (2, 3, 16, 20)
    assert mod_crop(cropped, 4).shape == cropped.shape


def test_matrices_follow_input_dtype_and_cache_is_not_mutated():
    a = resize_matrix(5, 10, dtype=torch.float64)
    a.zero_()
    assert resize_matrix(5, 10, dtype=torch.float64).abs().sum() > 0
    assert resize(torch.rand(1, 5, 5, dtype=torch.float64), (10, 10)).dtype == torch.float64
    assert resize(torch.rand(1, 5, 5), (10, 10)).dtype == torch.float32


def test_gradcheck():
    img = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize(t, (7, 3)), (img,))


class _Up4(torch.nn.Module):
    def forward(self, y):
        return upscale(y, 4)


def test_onnx_export_is_matmul_only():
    onnx = pytest.importorskip("onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Up4(), (torch.rand(1, 3, 6, 5),), buf, dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops == {"Constant", "MatMul"}, ops


@pytest.mark.parametrize("strict, hw", [(True, (7, 5)), (False, (9, 11))])
def test_torch_export_keeps_matrices_constant(strict, hw):
    y = torch.rand((1, 3) + hw)  # sizes used nowhere else: the first call happens under export
    program = torch.export.export(_Up4(), (y,), strict=strict)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.matmul.default" in ops
    if strict:
        assert ops <= {"aten.matmul.default", "aten.numpy_T.default", "aten.t.default"}, ops
    # Eager results after export (the cache must hold real values, not traced ones).
    torch.testing.assert_close(program.module()(y), upscale(y, 4))
    expected = _reference(y.double().numpy(), 4 * hw[0], 4 * hw[1])
    torch.testing.assert_close(upscale(y, 4), torch.from_numpy(expected).float())


def test_resize_matrix_is_marked_constant_as_the_decorator_marks():
    """resize_matrix sets the mark of torch.compiler.assume_constant_result itself (not to import
    torch._dynamo at start-up): the decorator must still mark functions that way."""
    marked = torch.compiler.assume_constant_result(lambda: None)
    assert marked._dynamo_marked_constant is True
    assert resize_matrix._dynamo_marked_constant is True


@pytest.mark.parametrize("in_hw, out_hw", [((3, 1100), (12, 4400)), ((1100, 5), (275, 20)), ((1030, 1030), (1030, 2060))])
def test_long_sides_are_resized_in_blocks_with_the_dense_matrices_values(in_hw, out_hw):
    """Sides whose matrix exceeds DENSE_LIMIT go block by block (up, down, and both sides at once)."""
    img = torch.rand((2,) + in_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = resize_matrix(in_hw[0], out_hw[0], dtype=torch.float64) @ img @ resize_matrix(
        in_hw[1], out_hw[1], dtype=torch.float64).T
    torch.testing.assert_close(resize(img, out_hw), dense, rtol=0, atol=1e-12)


def test_a_long_strip_is_upscaled_in_memory_that_grows_with_the_result():
    """A 20000x3 strip's x4 result is 11.5 MB; one dense matrix of its long side would be 12.8 GB in
    float64. Run in a child process whose address space may grow by 3 GB once torch is imported (a
    CUDA build of torch maps more than that at import)."""
    code = ("import resource, torch; from ecdp.resize import upscale; "
            "size = next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmSize')); "
            "resource.setrlimit(resource.RLIMIT_AS, (size + 3 * 2**30, size + 3 * 2**30)); "
            "x = upscale(torch.full((1, 3, 3, 20000), 0.37), 4); "
            "assert x.shape == (1, 3, 12, 80000) and (x - 0.37).abs().max() < 1e-6; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
