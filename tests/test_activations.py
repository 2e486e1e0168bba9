"""Each activation and its derivative: reference vs closed forms, compiled vs reference."""
import warnings
from decimal import Decimal, localcontext

import numpy as np
import pytest

import bpfast
from bpfast import reference
from bpfast.activations import ACTIVATIONS as NAMES, ALIASES

from conftest import ACTIVATIONS, DTYPES

POINTS = np.array([-1e4, -1e3, -100.0, -30.0, -1.0, -0.25, 0.0, 0.25, 1.0, 30.0, 100.0,
                   1e3, 1e4])


# --------------------------------------------------------------------------------------
# Closed forms, evaluated with 60 significant digits (decimal) and rounded once.
# --------------------------------------------------------------------------------------

def _exact(name, z):
    """(g(z), g'(z)) as Python floats; relu-like use g'(0) = 0 and 0.01 respectively."""
    with localcontext() as ctx:
        ctx.prec = 60
        d = Decimal(float(z))
        one = Decimal(1)
        s = one / (one + (-d).exp())                    # sigmoid
        if name == "identity":
            g, dg = d, one
        elif name == "sigmoid":
            g, dg = s, s * (one - s)
        elif name == "tanh":
            e2 = (2 * d).exp() if d < 0 else (-2 * d).exp()
            t = (one - e2) / (one + e2)
            g = t if d >= 0 else -t
            dg = 4 * e2 / (one + e2) ** 2                # sech^2 z
        elif name == "relu":
            g, dg = max(d, Decimal(0)), (one if d > 0 else Decimal(0))
        elif name == "leaky_relu":
            g = d if d > 0 else Decimal("0.01") * d
            dg = one if d > 0 else Decimal("0.01")
        elif name == "softplus":
            g = (one + d.exp()).ln() if d < 0 else d + (one + (-d).exp()).ln()
            dg = s
        elif name == "silu":
            g, dg = d * s, s * (one + d * (one - s))
        else:  # pragma: no cover
            raise KeyError(name)
        return float(g), float(dg)


def _exact_arrays(name, z):
    pairs = [_exact(name, v) for v in np.asarray(z, dtype=np.float64)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


# tolerances for values (relative, with a tiny absolute floor) and derivatives
# (absolute floor at O(1) scale: a(1-a) and 1-a^2 lose relative accuracy where a -> 1)
VAL_TOL = {np.dtype(np.float64): (1e-13, 1e-300), np.dtype(np.float32): (2e-6, 1e-37)}
DER_TOL = {np.dtype(np.float64): (1e-12, 1e-15), np.dtype(np.float32): (2e-6, 2e-7)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_reference_value_and_derivative_closed_form(name, dtype):
    dt = np.dtype(dtype)
    z = POINTS.astype(dt)
    g, g_prime = reference.ACTIVATIONS[name]
    a = g(z)
    da = g_prime(z, a)
    assert a.dtype == dt and da.dtype == dt
    want_a, want_da = _exact_arrays(name, z)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(da))
    rtol, atol = VAL_TOL[dt]
    np.testing.assert_allclose(a, want_a, rtol=rtol, atol=atol)
    rtol, atol = DER_TOL[dt]
    np.testing.assert_allclose(da, want_da, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_reference_derivative_matches_numerical_derivative(name):
    """g' against (g(z + h) - g(z - h)) / 2h, away from kinks."""
    z = np.array([-30.0, -3.0, -1.0, -0.3, 0.2, 1.0, 3.0, 30.0])
    if name not in ("relu", "leaky_relu"):
        z = np.append(z, 0.0)
    g, g_prime = reference.ACTIVATIONS[name]
    h = 1e-5
    numerical = (g(z + h) - g(z - h)) / (2 * h)
    np.testing.assert_allclose(g_prime(z, g(z)), numerical, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name,z,want", [
    ("sigmoid", 1e4, 1.0), ("sigmoid", -1e4, 0.0), ("sigmoid", 0.0, 0.5),
    ("softplus", 1e4, 1e4), ("softplus", -1e4, 0.0), ("softplus", 0.0, np.log(2.0)),
    ("silu", 1e4, 1e4), ("silu", -1e4, 0.0), ("tanh", 1e4, 1.0), ("tanh", -1e4, -1.0),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_values_reference(name, z, want, dtype):
    g, _ = reference.ACTIVATIONS[name]
    got = g(np.array([z], dtype=dtype))
    np.testing.assert_allclose(got, [want], rtol=1e-6, atol=1e-30)


# --------------------------------------------------------------------------------------
# Compiled activations: a single layer with W = I, b = 0 applies g elementwise
# --------------------------------------------------------------------------------------

def _identity_layer(n, dtype):
    return [np.eye(n, dtype=dtype)], [np.zeros(n, dtype=dtype)]


# compiled libm vs NumPy's own exp/tanh/log1p: a few ulp apart
ULP_RTOL = {np.dtype(np.float64): 1e-14, np.dtype(np.float32): 2e-6}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_compiled_activation_equals_reference(name, dtype):
    dt = np.dtype(dtype)
    z = POINTS.astype(dt)[None, :]
    W, b = _identity_layer(z.shape[1], dt)
    got = bpfast.forward(W, b, name, z)
    want = reference.forward(W, b, name, z)
    assert got.dtype == dt
    np.testing.assert_allclose(got, want, rtol=ULP_RTOL[dt], atol=np.finfo(dt).tiny)
    want_exact, _ = _exact_arrays(name, z[0])
    rtol, atol = VAL_TOL[dt]
    np.testing.assert_allclose(got[0], want_exact, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_compiled_derivative_equals_reference(name, dtype):
    """With m = 1, W = I, b = 0 and A - Y = 1, db is g'(z) elementwise."""
    dt = np.dtype(dtype)
    z = POINTS.astype(dt)[None, :]
    W, b = _identity_layer(z.shape[1], dt)
    Y = reference.forward(W, b, name, z) - 1
    _, dW, db = bpfast.backprop(W, b, name, z, Y)
    _, dW_ref, db_ref = reference.backprop(W, b, name, z, Y)
    assert db[0].dtype == dt
    rtol = ULP_RTOL[dt]
    np.testing.assert_allclose(db[0], db_ref[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dW[0], dW_ref[0], rtol=rtol,
                               atol=rtol * np.max(np.abs(dW_ref[0])))
    _, want = _exact_arrays(name, z[0])
    rtol, atol = DER_TOL[dt]
    np.testing.assert_allclose(db[0], want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_activations_on_dense_grid(dtype):
    """Many points in [-40, 40]: compiled g and g' equal the reference to a few ulp."""
    dt = np.dtype(dtype)
    z = np.linspace(-40, 40, 2001).astype(dt)[None, :]
    z[0, 1000] = 0
    W, b = _identity_layer(z.shape[1], dt)
    for name in ACTIVATIONS:
        got = bpfast.forward(W, b, name, z)
        want = reference.forward(W, b, name, z)
        np.testing.assert_allclose(got, want, rtol=ULP_RTOL[dt], atol=np.finfo(dt).tiny,
                                   err_msg=name)
        Y = want - 1
        _, _, db = bpfast.backprop(W, b, name, z, Y)
        _, _, db_ref = reference.backprop(W, b, name, z, Y)
        np.testing.assert_allclose(db[0], db_ref[0], rtol=ULP_RTOL[dt],
                                   atol=10 * np.finfo(dt).eps, err_msg=name)


# --------------------------------------------------------------------------------------
# |z| up to 1e4: finite, correct, no warnings
# --------------------------------------------------------------------------------------

EXTREME = np.array([[-1e4, -1e3, -800.0, -100.0, -89.0, -30.0, 0.0, 30.0, 89.0, 100.0,
                     800.0, 1e3, 1e4]])


def _run_all(module, name, dtype):
    dt = np.dtype(dtype)
    X = EXTREME.astype(dt)
    W, b = _identity_layer(X.shape[1], dt)
    Y = np.zeros_like(X)
    A = module.forward(W, b, name, X)
    E, dW, db = module.backprop(W, b, name, X, Y)
    Lo = module.loss(W, b, name, X, Y)
    return A, E, dW, db, Lo


def _check_extreme_results(name, A, E, dW, db, Lo):
    for arr in (A, dW[0], db[0]):
        assert np.all(np.isfinite(arr)), name
    assert np.isfinite(E) and np.isfinite(Lo)
    z = EXTREME[0]
    a = A[0].astype(np.float64)
    if name == "sigmoid":
        assert a[0] == 0.0 or a[0] < 1e-300
        assert a[-1] == 1.0
        np.testing.assert_allclose(a[z == 0], 0.5)
    else:  # softplus
        assert 0.0 <= a[0] < 1e-300
        assert a[-1] == 1e4
        np.testing.assert_allclose(a[z == 0], np.log(2.0), rtol=1e-6)
    assert np.all(a >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "softplus"])
def test_extreme_inputs_compiled_no_warnings(name, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):  # no effect on C code, but on any NumPy glue
            out = _run_all(bpfast, name, dtype)
    _check_extreme_results(name, *out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "softplus", "silu"])
def test_extreme_inputs_reference_no_overflow(name, dtype):
    """No overflow, invalid or divide-by-zero in the reference (underflow left default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            out = _run_all(reference, name, dtype)
    if name != "silu":
        _check_extreme_results(name, *out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_compiled_equal_reference(dtype):
    dt = np.dtype(dtype)
    X = EXTREME.astype(dt)
    W, b = _identity_layer(X.shape[1], dt)
    for name in ACTIVATIONS:
        got = bpfast.forward(W, b, name, X)
        with np.errstate(under="ignore"):
            want = reference.forward(W, b, name, X)
        np.testing.assert_allclose(got, want, rtol=ULP_RTOL[dt], atol=np.finfo(dt).tiny,
                                   err_msg=name)


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

def test_activation_names():
    assert set(ACTIVATIONS) <= set(NAMES)
    assert tuple(bpfast.ACTIVATIONS) == NAMES
    assert set(ACTIVATIONS) <= set(reference.ACTIVATIONS)


@pytest.mark.parametrize("alias,canonical", [("logistic", "sigmoid"), ("linear", "identity"),
                                             ("swish", "silu")])
def test_aliases(alias, canonical):
    assert ALIASES[alias] == canonical
    W, b = [np.array([[0.7, -1.2], [0.3, 0.5]])], [np.array([0.1, -0.2])]
    X = np.array([[1.0, 2.0], [-0.5, 0.25]])
    Y = np.zeros((2, 2))
    for module in (bpfast, reference):
        np.testing.assert_array_equal(module.forward(W, b, alias, X),
                                      module.forward(W, b, canonical, X))
        np.testing.assert_array_equal(module.forward(W, b, [alias], X),
                                      module.forward(W, b, [canonical], X))
        E1, dW1, db1 = module.backprop(W, b, alias, X, Y)
        E2, dW2, db2 = module.backprop(W, b, canonical, X, Y)
        assert E1 == E2
        np.testing.assert_array_equal(dW1[0], dW2[0])
        np.testing.assert_array_equal(db1[0], db2[0])
    assert bpfast.Network([2, 2], activations=alias).activations == (canonical,)


@pytest.mark.parametrize("spelling", ["TANH", "Tanh", "tAnH", " tanh "])
def test_case_insensitive_names(spelling):
    W, b = [np.array([[0.7, -1.2]])], [np.array([0.1])]
    X = np.array([[1.0, 2.0]])
    want = bpfast.forward(W, b, "tanh", X)
    np.testing.assert_array_equal(bpfast.forward(W, b, spelling, X), want)
    np.testing.assert_array_equal(bpfast.forward(W, b, [spelling], X), want)
    np.testing.assert_array_equal(reference.forward(W, b, spelling, X),
                                  reference.forward(W, b, "tanh", X))
    for upper in ("LOGISTIC", "Swish", "LINEAR", "Leaky_ReLU", "SiLU"):
        bpfast.forward(W, b, upper, X)


@pytest.mark.parametrize("bad", ["gelu", "sigmod", "", "relu6", "leaky relu"])
def test_unknown_activation_lists_valid_names(bad):
    W, b = [np.ones((2, 2))], [np.zeros(2)]
    X = np.ones((1, 2))
    for call in (lambda: bpfast.forward(W, b, bad, X),
                 lambda: reference.forward(W, b, bad, X),
                 lambda: bpfast.backprop(W, b, [bad], X, X),
                 lambda: bpfast.Network([2, 2], activations=bad)):
        with pytest.raises(ValueError, match="activations") as info:
            call()
        msg = str(info.value)
        for name in ACTIVATIONS:
            assert name in msg
        assert repr(bad) in msg


def test_unknown_activation_in_list_names_the_position():
    W = [np.ones((2, 2)), np.ones((2, 2))]
    b = [np.zeros(2), np.zeros(2)]
    with pytest.raises(ValueError, match=r"activations\[1\]"):
        bpfast.forward(W, b, ["tanh", "nope"], np.ones((1, 2)))


@pytest.mark.parametrize("bad", [3, None, 1.5, [3], [None]])
def test_non_string_activation_raises_type_error(bad):
    W, b = [np.ones((2, 2))], [np.zeros(2)]
    with pytest.raises(TypeError, match="activations"):
        bpfast.forward(W, b, bad, np.ones((1, 2)))
