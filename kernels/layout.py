"""Tensors seen as (batch, channel, spatial) with one stride each, the kernels' addressing.

The kernels add the batch offset in 64 bits and the offset within a sample (channel and spatial)
in 32 bits, unless the launch has OFFSET64 (then in 64 bits): ``needs_offset64`` decides.
"""

INT32_MAX = 2**31 - 1


def bcs_strides(t):
    """Strides of `t` seen as (batch, channel, spatial), or None when its trailing dims don't collapse."""
    inner = expected = None
    for size, stride in reversed(list(zip(t.shape[2:], t.stride()[2:]))):
        if size == 1:
            continue
        if expected is None:
            inner = stride
        elif stride != expected:
            return None
        expected = stride * size
    return t.stride(0), t.stride(1), (1 if inner is None else inner)


def as_bcs(t):
    """(tensor, strides) with `t` read in place when possible, else a contiguous copy."""
    strides = bcs_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = bcs_strides(t)
    return t, strides


def full_extent(t):
    """The largest element offset from t's first element (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def sample_extent(t):
    """The largest element offset within one sample of t (the dims after the first)."""
    return full_extent(t[0]) if t.numel() else 0


def needs_offset64(*tensors):
    """Whether an offset within a sample of any of the (B, C, ...) tensors (None skipped) passes int32."""
    return max((sample_extent(t) for t in tensors if t is not None), default=0) > INT32_MAX
