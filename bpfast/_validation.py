"""Input checks shared by the compiled API and the NumPy reference.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the argument,
says what was expected and what came. Nothing here writes into the caller's arrays: data
are converted with :func:`as_kernel_array` (C-contiguous, aligned, native byte order),
which copies only when it has to.
"""
import numbers
from typing import Any

import numpy as np

#: Floating dtypes the kernels compute in.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_INT_MAX = 2**31 - 1


def _describe(x):
    return f"{type(x).__name__}"


def as_kernel_array(a, dtype):
    """``a`` as a C-contiguous, aligned array of ``dtype``: what the kernels read.

    ``np.ascontiguousarray`` alone can return an unaligned array (e.g. one unpickled from
    a byte buffer), which the kernels refuse; this copies in that case too.
    """
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def check_dtype(dtype, name="dtype"):
    """The float32 or float64 ``np.dtype`` that ``dtype`` names."""
    try:
        dt = np.dtype(dtype).newbyteorder("=")
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def refuse_masked(x, name):
    """``x``, unless it is a masked array: TypeError naming ``name``.

    The kernels read an array's data, never a mask, so whatever sits under the mask
    (often NaN, or a placeholder) would be used as a value.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name}: expected a plain array, got a masked array (its mask would be "
            f"ignored and the values under it used); fill it with .filled(value) or "
            f"drop the masked rows"
        )
    return x


def _as_array(x, name):
    refuse_masked(x, name)
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array of numbers, got {_describe(x)} ({err})") from None


def _check_kind(a, name):
    """Real numbers only: booleans, integers and floats are accepted."""
    if a.dtype.kind == "c":
        raise TypeError(f"{name}: expected real numbers, got complex dtype {a.dtype}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")


def check_finite(a, name):
    """Raise ValueError naming ``name`` and the first entry of ``a`` that is not finite."""
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise ValueError(f"{name}: expected finite values, got {a[tuple(bad)]} at [{where}]")


def check_parameters(weights, biases):
    """Check a network's parameters and return them as lists of C-contiguous arrays.

    Parameters
    ----------
    weights : sequence of array_like, ``weights[l]`` of shape ``(n^{l+1}, n^l)``
    biases : sequence of array_like, ``biases[l]`` of shape ``(n^{l+1},)``

    Returns
    -------
    weights, biases : lists of ndarray
        In one floating dtype (float32 or float64; integer input becomes float64).
    sizes : tuple of int
        The layer sizes ``(n^0, ..., n^L)``.
    dtype : np.dtype
    """
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"weights: expected a list of 2-D arrays (one per layer), got {_describe(weights)}"
        )
    if isinstance(biases, np.ndarray) or not isinstance(biases, (list, tuple)):
        raise TypeError(
            f"biases: expected a list of 1-D arrays (one per layer), got {_describe(biases)}"
        )
    if len(weights) == 0:
        raise ValueError("weights: expected at least one layer, got an empty list")
    if len(biases) != len(weights):
        raise ValueError(
            f"biases: expected {len(weights)} arrays (one per weight matrix), got {len(biases)}"
        )
    ws = [_as_array(w, f"weights[{l}]") for l, w in enumerate(weights)]
    bs = [_as_array(b, f"biases[{l}]") for l, b in enumerate(biases)]
    for l, (w, b) in enumerate(zip(ws, bs)):
        _check_kind(w, f"weights[{l}]")
        _check_kind(b, f"biases[{l}]")
    # byte order does not matter here: parameters are converted to native order below
    float_dtypes = {a.dtype.newbyteorder("=") for a in ws + bs if a.dtype.kind == "f"}
    if not float_dtypes:
        dtype = np.dtype(np.float64)
    elif len(float_dtypes) > 1:
        names = ", ".join(sorted(str(d) for d in float_dtypes))
        raise TypeError(
            f"weights and biases: expected one floating dtype for all parameters, got {names}"
        )
    else:
        dtype = check_dtype(float_dtypes.pop(), "weights and biases dtype")
    sizes = []
    for l, (w, b) in enumerate(zip(ws, bs)):
        if w.ndim != 2:
            raise ValueError(
                f"weights[{l}]: expected a 2-D array (n_out, n_in), got {w.ndim} dimensions"
            )
        if b.ndim != 1:
            raise ValueError(
                f"biases[{l}]: expected a 1-D array (n_out,), got {b.ndim} dimensions"
            )
        n_out, n_in = w.shape
        if n_out < 1 or n_in < 1:
            raise ValueError(f"weights[{l}]: expected a non-empty matrix, got shape {w.shape}")
        if n_out > _INT_MAX or n_in > _INT_MAX:
            raise ValueError(f"weights[{l}]: layer sizes must be below 2**31, got {w.shape}")
        if l == 0:
            sizes.append(n_in)
        elif n_in != sizes[-1]:
            raise ValueError(
                f"weights[{l}]: expected {sizes[-1]} columns to match weights[{l - 1}] "
                f"with {sizes[-1]} rows, got shape {w.shape}"
            )
        if b.shape != (n_out,):
            raise ValueError(
                f"biases[{l}]: expected shape ({n_out},) to match weights[{l}] of shape "
                f"{w.shape}, got {b.shape}"
            )
        sizes.append(n_out)
    ws = [as_kernel_array(w, dtype) for w in ws]
    bs = [as_kernel_array(b, dtype) for b in bs]
    for l, (w, b) in enumerate(zip(ws, bs)):
        check_finite(w, f"weights[{l}]")
        check_finite(b, f"biases[{l}]")
    return ws, bs, tuple(sizes), dtype


def check_data(X, name, n_columns, dtype, column_meaning, finite=True):
    """Check a data matrix and return it C-contiguous in ``dtype``.

    Parameters
    ----------
    X : array_like of shape ``(m, n_columns)``
        Real numbers, all finite, at least one row.
    name : str
        The argument's name, for messages.
    n_columns : int
        Expected number of columns.
    dtype : np.dtype
        The network's dtype.
    column_meaning : str
        What the columns must match, for messages (e.g. ``"n^0 = weights[0].shape[1]"``).
    finite : bool
        Whether to check here that every value is finite. A caller that makes its own
        pass over the data anyway passes False and calls :func:`check_finite` only when
        that pass finds a value that is not finite (for the message).
    """
    if (type(X) is np.ndarray and X.dtype == dtype and X.ndim == 2  # the usual case
            and X.shape[1] == n_columns and 0 < X.shape[0] <= _INT_MAX
            and X.flags.c_contiguous and X.flags.aligned):
        if finite:
            check_finite(X, name)
        return X
    a = _as_array(X, name)
    _check_kind(a, name)
    if a.ndim != 2:
        hint = _one_d_hint(name, a, n_columns) if a.ndim == 1 else ""
        raise ValueError(
            f"{name}: expected a 2-D array (n_samples, {n_columns}), got {a.ndim} "
            f"dimensions with shape {a.shape}{hint}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one sample (row), got shape {a.shape}")
    if a.shape[1] != n_columns:
        raise ValueError(
            f"{name}: expected {n_columns} columns ({column_meaning}), got shape {a.shape}"
        )
    if a.shape[0] > _INT_MAX:
        raise ValueError(f"{name}: expected fewer than 2**31 rows, got {a.shape[0]}")
    a = as_kernel_array(a, dtype)
    if finite:
        check_finite(a, name)
    return a


def _one_d_hint(name, a, n_columns):
    """The reshape that makes the 1-D ``a`` the expected 2-D shape, when one does."""
    if n_columns == 1:  # m rows of one column (e.g. one target per sample)
        return f"; for one column of {a.shape[0]} rows use {name}.reshape(-1, 1)"
    if a.shape[0] == n_columns:
        return f"; for one sample use {name}.reshape(1, -1)"
    return ""


def check_inputs(weights, biases, activations, X, Y=None, bound=None,
                 ) -> tuple[list[np.ndarray], list[np.ndarray], Any, np.ndarray, Any]:
    """All checks of a ``forward``/``backprop`` call.

    ``bound``, when given, is a compiled ``max |a|`` that returns inf when a value is not
    finite (``_kernels.magnitude_bound``): the data's finiteness check then takes it
    instead of NumPy's isfinite, which writes a boolean array first. The reference leaves
    it out and stays pure NumPy.

    Returns
    -------
    weights, biases : lists of ndarray
    names : tuple of str
        One canonical activation name per layer.
    X, Y : ndarray (``Y`` is None when not given)
    """
    from .activations import resolve_activations

    weights, biases, sizes, dtype = check_parameters(weights, biases)
    names = resolve_activations(activations, len(weights))
    X = check_data(X, "X", sizes[0], dtype, "n^0 = weights[0].shape[1]", bound is None)
    if bound is not None and not bound(X) < np.inf:
        check_finite(X, "X")
    if Y is not None:
        Y = check_data(Y, "Y", sizes[-1], dtype, "n^L = weights[-1].shape[0]", bound is None)
        if bound is not None and not bound(Y) < np.inf:
            check_finite(Y, "Y")
        if Y.shape[0] != X.shape[0]:
            raise ValueError(
                f"Y: expected {X.shape[0]} rows, one per row of X, got {Y.shape[0]}"
            )
    return weights, biases, names, X, Y


def check_positive_int(value, name):
    if type(value) is int and value >= 1:  # the usual case, without ABCs
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return int(value)
