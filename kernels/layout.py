"""Tensors seen as (batch, channel, spatial) with one stride each, the kernels' addressing."""


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
