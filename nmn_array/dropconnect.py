"""DropConnect and fixed kernel masks: what the layers do to a kernel before the yat product.

nmn applies them in this order (reference section 3.1): DropConnect, then the fixed mask,
then (inside :func:`nmn_array.yat` / :func:`nmn_array.yat_conv`) weight normalisation. The
random draw of the kept entries belongs to each framework's random number generator; the
arithmetic lives here.
"""

from __future__ import annotations

from typing import Any

from nmn_array import _validation as v
from nmn_array._namespace import array_namespace, scalar_like


def _check_like_kernel(xp: Any, a: Any, name: str, kernel: Any, *, bool_only: bool) -> None:
    if tuple(a.shape) != tuple(kernel.shape):
        raise ValueError(
            f"{name} must have the kernel's shape {tuple(kernel.shape)}, got {tuple(a.shape)}"
        )
    if xp.isdtype(a.dtype, "bool"):
        return
    if bool_only:
        raise TypeError(f"{name} must be a boolean array (True = keep), got {a.dtype}")
    v.check_float_array(xp, a, name)


def drop_connect(kernel: Any, keep: Any = None, *, rate: float = 0.0, mask: Any = None) -> Any:
    """A kernel after DropConnect and a fixed mask, in nmn's order.

    ``where(keep, kernel / (1 - rate), 0) * mask``: entries kept by the DropConnect draw are
    rescaled so that the expected kernel is unchanged (inverted dropout), dropped ones are 0;
    then the fixed mask multiplies every entry.

    Parameters
    ----------
    kernel : array
        The layer's kernel, in any layout.
    keep : None or boolean array of the kernel's shape
        ``True`` where DropConnect keeps the weight, drawn by the caller with probability
        ``1 - rate`` each. None: no DropConnect (evaluation mode); ``rate`` is then unused.
    rate : float in [0, 1)
        The probability of dropping a weight that ``keep`` was drawn with.
    mask : None or array of the kernel's shape (floating or boolean)
        A fixed mask (for example a causal or structured-sparsity pattern); None: no mask.

    Returns
    -------
    array
        The kernel's library, dtype and shape.

    Examples
    --------
    >>> import numpy as np
    >>> from nmn_array.dropconnect import drop_connect
    >>> kernel = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> drop_connect(kernel, np.array([[True, False], [True, True]]), rate=0.5)
    array([[2., 0.],
           [6., 8.]])
    >>> drop_connect(kernel, mask=np.array([[1.0, 0.0], [0.0, 1.0]]))
    array([[1., 0.],
           [0., 4.]])
    """
    rate = v.check_rate(rate, "rate")
    xp = array_namespace(*(a for a in (kernel, keep, mask) if a is not None))
    v.check_float_array(xp, kernel, "kernel")
    dtype = kernel.dtype
    # float16 / bfloat16 are computed in float32 and cast back once (the contract): in the
    # format itself, 1 - rate and the quotient would each be rounded (two roundings)
    low = v.is_low_precision(xp, dtype)
    if low:
        kernel = v.as_compute(xp, kernel, v.compute_dtype(xp, kernel, "kernel"))
    if keep is not None:
        _check_like_kernel(xp, keep, "keep", kernel, bool_only=True)
        scale = scalar_like(xp, 1.0 - rate, kernel)
        kernel = xp.where(keep, kernel / scale, scalar_like(xp, 0.0, kernel))
    if mask is not None:
        _check_like_kernel(xp, mask, "mask", kernel, bool_only=False)
        if xp.isdtype(mask.dtype, "bool"):
            kernel = xp.where(mask, kernel, scalar_like(xp, 0.0, kernel))
        else:
            if v.is_low_precision(xp, mask.dtype):
                mask = v.as_compute(xp, mask, v.compute_dtype(xp, mask, "mask"))
            kernel = kernel * mask
    return v.cast_back(xp, kernel, dtype) if low else kernel
