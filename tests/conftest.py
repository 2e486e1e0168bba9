"""Shared helpers for the bpfast test suite.

Comparisons follow one rule (see ``assert_close``): relative tolerance ``RTOL`` of the
dtype plus an absolute floor ``RTOL * max|want|`` tied to the array's own scale, since
BLAS and NumPy sum in different orders and elements near zero carry absolute error.
"""
import numpy as np
import pytest

#: The contract's canonical activation names (bpfast may offer more, e.g. output-only ones).
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "silu")
#: Activations with a continuous derivative everywhere.
SMOOTH = ("identity", "sigmoid", "tanh", "softplus", "silu")
#: Activations with a kink at 0.
KINKED = ("relu", "leaky_relu")

DTYPES = (np.float64, np.float32)

#: Elementwise relative tolerance of compiled vs reference arrays.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
#: Relative tolerance of the error E.
E_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def rtol_for(dtype):
    return RTOL[np.dtype(dtype)]


def e_rtol_for(dtype):
    return E_RTOL[np.dtype(dtype)]


def assert_close(got, want, dtype=None, rtol=None, err_msg="", scale=None):
    """``assert_allclose(got, want, rtol, atol=rtol * scale)``.

    ``rtol`` defaults to ``RTOL`` of ``dtype`` (or of ``want``'s dtype); ``scale`` to
    max|want|. Pass a larger ``scale`` where ``want`` is a sum whose terms cancel: its
    rounding error is relative to the terms, not to the sum.
    """
    want = np.asarray(want)
    if rtol is None:
        rtol = rtol_for(dtype if dtype is not None else want.dtype)
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def make_params(sizes, dtype=np.float64, seed=0, bias_scale=0.5):
    """Random weights ``N(0, 1/n_in)`` and biases ``N(0, bias_scale^2)`` for ``sizes``.

    The 1/sqrt(n_in) scale keeps pre-activations O(1) at any width, so nothing saturates;
    nonzero biases keep relu-like units off their kink.
    """
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype))
        biases.append((bias_scale * rng.standard_normal(n_out)).astype(dtype))
    return weights, biases


def make_data(sizes, m, dtype=np.float64, seed=1):
    """Random inputs ``X`` of shape ``(m, n^0)`` and targets ``Y`` of shape ``(m, n^L)``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, sizes[0])).astype(dtype)
    Y = rng.uniform(-1.0, 1.0, (m, sizes[-1])).astype(dtype)
    return X, Y


def snapshot(*arrays_or_lists):
    """Byte-for-byte copies of arrays (and lists of arrays) for later comparison."""
    out = []
    for a in arrays_or_lists:
        if isinstance(a, (list, tuple)):
            out.append([(np.asarray(x).dtype, np.asarray(x).shape, np.asarray(x).tobytes())
                        for x in a])
        else:
            a = np.asarray(a)
            out.append((a.dtype, a.shape, a.tobytes()))
    return out


@pytest.fixture
def small_net():
    """A small float64 problem: sizes, weights, biases, X, Y."""
    sizes = (4, 6, 5, 3)
    weights, biases = make_params(sizes, seed=3)
    X, Y = make_data(sizes, 7, seed=4)
    return sizes, weights, biases, X, Y
