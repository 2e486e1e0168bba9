"""Input checking, memory layouts, dtypes, and the caller's arrays left untouched."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import bpfast
from bpfast import reference

from conftest import (ACTIVATIONS, DTYPES, assert_close, e_rtol_for, make_data,
                      make_params, snapshot)

MODULES = [bpfast, reference]
MODULE_IDS = ["compiled", "reference"]

HYP = settings(max_examples=50, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _name(arg):
    """A regex that matches the argument's name literally, e.g. ``weights\\[1\\]``."""
    return re.escape(arg)


def _calls(module, weights, biases, activations, X, Y):
    """Every entry point of a module that takes (weights, biases, activations, X[, Y])."""
    calls = [lambda: module.forward(weights, biases, activations, X),
             lambda: module.backprop(weights, biases, activations, X, Y),
             lambda: module.loss(weights, biases, activations, X, Y)]
    return calls


@pytest.fixture
def problem():
    sizes = (4, 5, 3)
    weights, biases = make_params(sizes, seed=8)
    X, Y = make_data(sizes, 6, seed=9)
    return weights, biases, X, Y


# ======================================================================================
# Bad inputs: exception type and the argument named in the message
# ======================================================================================

@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
class TestBadInputs:

    def _raises(self, module, exc, arg, weights, biases, X, Y, activations="tanh",
                forward_too=True):
        calls = _calls(module, weights, biases, activations, X, Y)
        if not forward_too:
            calls = calls[1:]
        for call in calls:
            with pytest.raises(exc, match=_name(arg)):
                call()

    @pytest.mark.parametrize("ncols", [1, 3, 5, 8])
    def test_X_wrong_columns(self, module, problem, ncols):
        W, b, X, Y = problem
        Xbad = np.ones((X.shape[0], ncols))
        self._raises(module, ValueError, "X", W, b, Xbad, Y)

    @pytest.mark.parametrize("ncols", [1, 2, 4])
    def test_Y_wrong_columns(self, module, problem, ncols):
        W, b, X, Y = problem
        self._raises(module, ValueError, "Y", W, b, X, np.ones((X.shape[0], ncols)),
                     forward_too=False)

    @pytest.mark.parametrize("nrows", [1, 5, 7, 60])
    def test_different_row_counts(self, module, problem, nrows):
        W, b, X, Y = problem
        self._raises(module, ValueError, "Y", W, b, X, np.ones((nrows, Y.shape[1])),
                     forward_too=False)

    def test_weights_inconsistent_shapes(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "weights[1]", [W[0], np.ones((3, 4))], b, X, Y)

    def test_weights_wrong_ndim(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "weights[0]", [W[0].ravel(), W[1]], b, X, Y)
        self._raises(module, ValueError, "weights[1]", [W[0], W[1][None]], b, X, Y)

    def test_weights_empty_matrix(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "weights[0]", [np.ones((0, 4)), W[1]], b, X, Y)

    def test_biases_wrong_length(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "biases[0]", W, [np.ones(4), b[1]], X, Y)
        self._raises(module, ValueError, "biases[1]", W, [b[0], np.ones(2)], X, Y)

    def test_biases_wrong_ndim(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "biases[1]", W, [b[0], b[1][:, None]], X, Y)
        self._raises(module, ValueError, "biases[0]", W, [np.float64(1.0), b[1]], X, Y)

    def test_wrong_number_of_biases(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "biases", W, b[:1], X, Y)
        self._raises(module, ValueError, "biases", W, b + [b[1]], X, Y)

    def test_no_layers(self, module, problem):
        _, _, X, Y = problem
        self._raises(module, ValueError, "weights", [], [], X, Y)

    def test_weights_not_a_list(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, TypeError, "weights", W[0], b, X, Y)
        self._raises(module, TypeError, "biases", W, b[0], X, Y)
        self._raises(module, TypeError, "weights", None, b, X, Y)

    @pytest.mark.parametrize("acts", [["tanh"], ["tanh"] * 3, []])
    def test_wrong_number_of_activations(self, module, problem, acts):
        W, b, X, Y = problem
        self._raises(module, ValueError, "activations", W, b, X, Y, activations=acts)

    def test_unknown_activation(self, module, problem):
        W, b, X, Y = problem
        for call in _calls(module, W, b, "gelu", X, Y):
            with pytest.raises(ValueError, match="activations") as info:
                call()
            for name in ACTIVATIONS:
                assert name in str(info.value)

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("target", ["X", "Y", "weights[0]", "weights[1]", "biases[0]",
                                        "biases[1]"])
    def test_non_finite(self, module, problem, target, value):
        W, b, X, Y = problem
        W, b, X, Y = [w.copy() for w in W], [v.copy() for v in b], X.copy(), Y.copy()
        arr = {"X": X, "Y": Y, "weights[0]": W[0], "weights[1]": W[1],
               "biases[0]": b[0], "biases[1]": b[1]}[target]
        arr.flat[arr.size // 2] = value
        self._raises(module, ValueError, target, W, b, X, Y, forward_too=target != "Y")

    @pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
    def test_non_finite_after_conversion_to_float32(self, module):
        """A float64 X too large for float32 parameters becomes inf: rejected, not computed."""
        W, b = make_params((3, 2), dtype=np.float32)
        X = np.full((2, 3), 1e300)
        for call in _calls(module, W, b, "tanh", X, np.zeros((2, 2)))[:1]:
            with pytest.raises(ValueError, match="X"):
                call()

    def test_zero_samples(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, ValueError, "X", W, b, X[:0], Y[:0])
        with pytest.raises(ValueError, match="Y"):
            module.backprop(W, b, "tanh", X, Y[:0])

    @pytest.mark.parametrize("bad", [
        pytest.param(lambda X: X.astype(str), id="str-array"),
        pytest.param(lambda X: X.astype(object), id="object-array"),
        pytest.param(lambda X: X.astype(np.complex128), id="complex128"),
        pytest.param(lambda X: X.astype(np.complex64), id="complex64"),
        pytest.param(lambda X: "hello", id="string"),
        pytest.param(lambda X: None, id="None"),
        pytest.param(lambda X: [[1.0, "a", 2.0, 3.0]], id="list-with-str"),
        pytest.param(lambda X: [[1.0, 2.0], [3.0]], id="ragged-list"),
        pytest.param(lambda X: X.astype("datetime64[s]"), id="datetime"),
    ])
    def test_X_non_numeric(self, module, problem, bad):
        W, b, X, Y = problem
        Xbad = bad(X)
        for call in _calls(module, W, b, "tanh", Xbad, Y):
            with pytest.raises((TypeError, ValueError), match="X"):
                call()

    @pytest.mark.parametrize("kind", ["str", "object", "complex"])
    def test_Y_non_numeric(self, module, problem, kind):
        W, b, X, Y = problem
        Ybad = {"str": Y.astype(str), "object": Y.astype(object),
                "complex": Y.astype(complex)}[kind]
        self._raises(module, TypeError, "Y", W, b, X, Ybad, forward_too=False)

    def test_complex_and_str_and_object_parameters(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, TypeError, "weights[1]", [W[0], W[1].astype(complex)], b, X, Y)
        self._raises(module, TypeError, "biases[0]", W, [b[0].astype(str), b[1]], X, Y)
        self._raises(module, TypeError, "weights[0]", [W[0].astype(object), W[1]], b, X, Y)

    def test_mixed_float32_float64_parameters(self, module, problem):
        W, b, X, Y = problem
        self._raises(module, TypeError, "weights", [W[0], W[1].astype(np.float32)], b, X, Y)
        self._raises(module, TypeError, "biases",
                     [w.astype(np.float32) for w in W], b, X, Y)

    @pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
    def test_unsupported_float_parameters(self, module, problem, dtype):
        if np.dtype(dtype) == np.dtype(np.float64):  # pragma: no cover - platform
            pytest.skip("longdouble is float64 here")
        W, b, X, Y = problem
        self._raises(module, TypeError, "weights", [w.astype(dtype) for w in W],
                     [v.astype(dtype) for v in b], X, Y)

    @pytest.mark.parametrize("shape", [(), (4,), (1, 6, 4), (2, 3, 4, 1)])
    def test_X_wrong_ndim(self, module, problem, shape):
        W, b, X, Y = problem
        Xbad = np.ones(shape)
        Ybad = Y if len(shape) < 2 else np.ones(shape[:-1] + (3,))
        for call in _calls(module, W, b, "tanh", Xbad, Ybad):
            with pytest.raises(ValueError, match="X"):
                call()

    @pytest.mark.parametrize("shape", [(), (3,), (6, 3, 1)])
    def test_Y_wrong_ndim(self, module, problem, shape):
        W, b, X, Y = problem
        self._raises(module, ValueError, "Y", W, b, X, np.ones(shape), forward_too=False)


def test_one_dimensional_X_gets_a_hint(problem):
    W, b, X, _ = problem
    with pytest.raises(ValueError, match=r"X.*reshape\(1, -1\)"):
        bpfast.forward(W, b, "tanh", X[0])


# ======================================================================================
# Accepted inputs: layouts, dtypes, containers give the C-contiguous float answer
# ======================================================================================

def _results(module, W, b, acts, X, Y):
    A = module.forward(W, b, acts, X)
    E, dW, db = module.backprop(W, b, acts, X, Y)
    return A, E, dW, db, module.loss(W, b, acts, X, Y)


def _assert_same_results(got, want, dtype):
    A, E, dW, db, Lo = got
    A0, E0, dW0, db0, L0 = want
    dt = np.dtype(dtype)
    assert A.dtype == dt and A.shape == A0.shape
    assert_close(A, A0, dt)
    np.testing.assert_allclose(E, E0, rtol=e_rtol_for(dt))
    np.testing.assert_allclose(Lo, L0, rtol=e_rtol_for(dt))
    for g, g0 in zip(dW + db, dW0 + db0):
        assert g.dtype == dt and g.shape == g0.shape
        assert_close(g, g0, dt)


def _fortran(a):
    return np.asfortranarray(a)


def _strided_rows(a):
    """Same values, every other row of a twice-as-tall array (non-contiguous)."""
    big = np.zeros((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
    big[::2] = a
    out = big[::2]
    assert not out.flags.c_contiguous or a.shape[0] == 1
    return out


def _strided_cols(a):
    """Same values, every other column (or element, for 1-D) of a wider array."""
    if a.ndim == 1:
        big = np.zeros(2 * a.size, dtype=a.dtype)
        big[::2] = a
        return big[::2]
    big = np.zeros((a.shape[0], 2 * a.shape[1]), dtype=a.dtype)
    big[:, ::2] = a
    return big[:, ::2]


def _reversed_view(a):
    """Same values through a negative-stride view."""
    return np.flip(np.flip(a).copy())


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _readonly_view(a):
    v = a.copy().view()
    v.flags.writeable = False
    return v


LAYOUTS = {
    "fortran": _fortran,
    "strided_rows": _strided_rows,
    "strided_cols": _strided_cols,
    "negative_strides": _reversed_view,
    "readonly": _readonly,
    "readonly_view": _readonly_view,
    "readonly_fortran": lambda a: _readonly(_fortran(a)) if a.ndim == 2 else _readonly(a),
}


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("what", ["X", "Y", "params", "all"])
def test_layouts_give_same_results(module, dtype, layout, what):
    sizes = (6, 7, 5, 3)
    W, b = make_params(sizes, dtype=dtype, seed=13)
    X, Y = make_data(sizes, 9, dtype=dtype, seed=14)
    acts = ["tanh", "relu", "sigmoid"]
    want = _results(module, W, b, acts, X, Y)
    f = LAYOUTS[layout]
    X2 = f(X) if what in ("X", "all") else X
    Y2 = f(Y) if what in ("Y", "all") else Y
    W2 = [f(w) for w in W] if what in ("params", "all") else W
    b2 = [f(v) for v in b] if what in ("params", "all") else b
    before = snapshot(W2, b2, X2, Y2)
    got = _results(module, W2, b2, acts, X2, Y2)
    _assert_same_results(got, want, dtype)
    assert snapshot(W2, b2, X2, Y2) == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_slice_of_X_with_matching_weights(dtype):
    """X[:, ::2] (non-contiguous) with weights sized for the selected columns."""
    rng = np.random.default_rng(15)
    Xfull = rng.standard_normal((11, 10)).astype(dtype)
    Xs = Xfull[:, ::2]
    assert not Xs.flags.c_contiguous and not Xs.flags.f_contiguous
    sizes = (5, 4, 2)
    W, b = make_params(sizes, dtype=dtype, seed=16)
    _, Y = make_data(sizes, 11, dtype=dtype, seed=17)
    for module in MODULES:
        got = _results(module, W, b, "silu", Xs, Y[::1])
        want = _results(module, W, b, "silu", np.ascontiguousarray(Xs), Y)
        _assert_same_results(got, want, dtype)
    # and every other row of it too
    got = _results(bpfast, W, b, "silu", Xs[::2], Y[::2])
    want = _results(reference, W, b, "silu", np.ascontiguousarray(Xs[::2]),
                    np.ascontiguousarray(Y[::2]))
    _assert_same_results(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_weights_views(dtype):
    """Weights given as the transpose of a (n_in, n_out) array: a Fortran-ordered view."""
    sizes = (4, 6, 2)
    W, b = make_params(sizes, dtype=dtype, seed=18)
    X, Y = make_data(sizes, 5, dtype=dtype, seed=19)
    Wt = [np.ascontiguousarray(w.T).T for w in W]
    assert all(w.flags.f_contiguous and not w.flags.c_contiguous for w in Wt)
    _assert_same_results(_results(bpfast, Wt, b, "tanh", X, Y),
                         _results(bpfast, W, b, "tanh", X, Y), dtype)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xdtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16,
                                    np.bool_, np.float16, np.float32, np.float64])
def test_X_other_dtypes_converted(module, dtype, xdtype):
    sizes = (5, 4, 3)
    W, b = make_params(sizes, dtype=dtype, seed=20)
    rng = np.random.default_rng(21)
    Xi = rng.integers(0, 2 if xdtype is np.bool_ else 4, (8, 5)).astype(xdtype)
    Yi = rng.integers(0, 2, (8, 3)).astype(xdtype)
    want = _results(module, W, b, "sigmoid", Xi.astype(dtype), Yi.astype(dtype))
    got = _results(module, W, b, "sigmoid", Xi, Yi)
    _assert_same_results(got, want, dtype)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_byteswapped_X_and_Y(module):
    sizes = (5, 4, 3)
    W, b = make_params(sizes, seed=22)
    X, Y = make_data(sizes, 8, seed=23)
    Xs, Ys = X.astype(">f8"), Y.astype(">f8")
    _assert_same_results(_results(module, W, b, "tanh", Xs, Ys),
                         _results(module, W, b, "tanh", X, Y), np.float64)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_integer_and_bool_parameters_become_float64(module):
    W = [np.array([[1, -2, 0], [3, 1, -1]]), np.array([[1, 1]], dtype=np.int8)]
    b = [np.array([0, 1]), np.array([True])]
    X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    Y = np.zeros((2, 1))
    Wf = [w.astype(np.float64) for w in W]
    bf = [v.astype(np.float64) for v in b]
    _assert_same_results(_results(module, W, b, "tanh", X, Y),
                         _results(module, Wf, bf, "tanh", X, Y), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_parameters_with_one_float_dtype(dtype):
    """Integer arrays among float32 parameters are converted to float32."""
    W = [np.array([[1, -2, 0], [3, 1, -1]]), np.array([[0.5, 1.5]], dtype=dtype)]
    b = [np.array([0, 1]), np.array([0.25], dtype=dtype)]
    X = np.array([[0.5, -1.0, 2.0]])
    A = bpfast.forward(W, b, "identity", X)
    assert A.dtype == np.dtype(dtype)
    _, dW, db = bpfast.backprop(W, b, "identity", X, np.zeros((1, 1)))
    assert all(g.dtype == np.dtype(dtype) for g in dW + db)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_python_lists_instead_of_arrays(module):
    sizes = (3, 4, 2)
    W, b = make_params(sizes, seed=24)
    X, Y = make_data(sizes, 5, seed=25)
    got = _results(module, [w.tolist() for w in W], [v.tolist() for v in b], ["relu", "tanh"],
                   X.tolist(), Y.tolist())
    want = _results(module, W, b, ["relu", "tanh"], X, Y)
    _assert_same_results(got, want, np.float64)
    got = _results(module, tuple(W), tuple(b), ("relu", "tanh"), X, Y)
    _assert_same_results(got, want, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtypes(dtype):
    sizes = (3, 4, 2)
    W, b = make_params(sizes, dtype=dtype, seed=26)
    X, Y = make_data(sizes, 5, dtype=np.float64, seed=27)  # X, Y in float64 always
    for module in MODULES:
        A, E, dW, db, Lo = _results(module, W, b, "tanh", X, Y)
        assert A.dtype == np.dtype(dtype)
        assert all(g.dtype == np.dtype(dtype) for g in dW + db)
        assert type(E) is float and type(Lo) is float


# ======================================================================================
# The caller's arrays are never modified
# ======================================================================================

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("acts", ["sigmoid", ["relu", "silu", "identity"]])
def test_inputs_unchanged(dtype, acts):
    sizes = (6, 8, 5, 3)
    W, b = make_params(sizes, dtype=dtype, seed=28)
    X, Y = make_data(sizes, 12, dtype=dtype, seed=29)
    W_ids, b_ids = [id(w) for w in W], [id(v) for v in b]
    before = snapshot(W, b, X, Y)
    for module in MODULES:
        module.forward(W, b, acts, X)
        module.backprop(W, b, acts, X, Y)
        module.loss(W, b, acts, X, Y)
    bpfast.check_gradient(W, b, acts, X[:3], Y[:3])
    assert snapshot(W, b, X, Y) == before
    assert [id(w) for w in W] == W_ids and [id(v) for v in b] == b_ids
    assert len(W) == 3 and len(b) == 3


def test_outputs_do_not_alias_inputs(small_net):
    _, W, b, X, Y = small_net
    A = bpfast.forward(W, b, "identity", X)
    E, dW, db = bpfast.backprop(W, b, "identity", X, Y)
    for out in [A] + dW + db:
        for inp in W + b + [X, Y]:
            assert not np.shares_memory(out, inp)


def test_network_methods_leave_inputs_unchanged():
    net = bpfast.Network([5, 7, 2], activations="tanh", seed=0)
    X, Y = make_data((5, 7, 2), 10, seed=30)
    before = snapshot(net.weights, net.biases, X, Y)
    net.forward(X)
    net.loss(X, Y)
    net.gradient(X, Y)
    assert snapshot(net.weights, net.biases, X, Y) == before


def test_outputs_are_fresh_arrays(small_net):
    """Two calls return independent arrays (no shared scratch leaked to the caller)."""
    _, W, b, X, Y = small_net
    A1 = bpfast.forward(W, b, "tanh", X)
    A1c = A1.copy()
    A2 = bpfast.forward(W, b, "tanh", X[::-1])
    np.testing.assert_array_equal(A1, A1c)
    assert not np.shares_memory(A1, A2)
    _, dW1, _ = bpfast.backprop(W, b, "tanh", X, Y)
    keep = [g.copy() for g in dW1]
    bpfast.backprop(W, b, "tanh", X[::-1], Y)
    for g, k in zip(dW1, keep):
        np.testing.assert_array_equal(g, k)


# ======================================================================================
# Property-based tests
# ======================================================================================

@st.composite
def problems(draw, max_layers=3, max_width=7, max_m=9):
    L = draw(st.integers(1, max_layers))
    sizes = tuple(draw(st.lists(st.integers(1, max_width), min_size=L + 1, max_size=L + 1)))
    m = draw(st.integers(1, max_m))
    dtype = draw(st.sampled_from(DTYPES))
    acts = draw(st.one_of(st.sampled_from(ACTIVATIONS),
                          st.lists(st.sampled_from(ACTIVATIONS), min_size=L, max_size=L)))
    seed = draw(st.integers(0, 2**31))
    W, b = make_params(sizes, dtype=dtype, seed=seed)
    elements = st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=32)
    X = draw(hnp.arrays(np.float64, (m, sizes[0]), elements=elements)).astype(dtype)
    Y = draw(hnp.arrays(np.float64, (m, sizes[-1]), elements=elements)).astype(dtype)
    return sizes, acts, W, b, X, Y, dtype


def _relayout(draw, a):
    kind = draw(st.sampled_from(["c", "f", "strided", "reversed", "readonly", "list"]))
    if kind == "c":
        return a
    if kind == "f":
        return np.asfortranarray(a)
    if kind == "strided":
        step = draw(st.integers(2, 3))
        big = np.zeros(tuple(step * n for n in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, step) for _ in a.shape)] = a
        return big[tuple(slice(None, None, step) for _ in a.shape)]
    if kind == "reversed":
        return np.flip(np.flip(a).copy())
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    return a.tolist() if a.dtype == np.float64 else a


@given(problems(), st.data())
@HYP
def test_random_shapes_and_layouts_match_reference(problem, data):
    sizes, acts, W, b, X, Y, dtype = problem
    want_A = reference.forward(W, b, acts, X)
    want = reference.backprop(W, b, acts, X, Y)
    X2 = _relayout(data.draw, X)
    Y2 = _relayout(data.draw, Y)
    W2 = [_relayout(data.draw, w) for w in W]
    b2 = [_relayout(data.draw, v) for v in b]
    before = snapshot(W2, b2, X2, Y2)
    A = bpfast.forward(W2, b2, acts, X2)
    E, dW, db = bpfast.backprop(W2, b2, acts, X2, Y2)
    assert snapshot(W2, b2, X2, Y2) == before
    dt = np.dtype(dtype)
    assert A.shape == (X.shape[0], sizes[-1]) and A.dtype == dt
    assert_close(A, want_A, dt)
    # E may be near 0 when Y happens to be ~A: compare with an absolute floor too
    np.testing.assert_allclose(E, want[0], rtol=e_rtol_for(dt), atol=1e-6 if dt ==
                               np.float32 else 1e-14)
    # a layer's gradient can be a sum that nearly cancels (one output unit and a few
    # rows gave db = 2.68e-6 in float32, 7e-4 apart relatively): measure its error
    # against the size of the network's gradients, not against itself
    scale = max(float(np.max(np.abs(g))) for g in want[1] + want[2])
    for l in range(len(W)):
        assert dW[l].dtype == dt and db[l].dtype == dt
        assert_close(dW[l], want[1][l], dt, scale=scale)
        assert_close(db[l], want[2][l], dt, scale=scale)


@given(problems(), st.integers(-3, 3).filter(lambda d: d != 0))
@HYP
def test_random_wrong_X_columns_raise(problem, delta):
    sizes, acts, W, b, X, Y, dtype = problem
    n = sizes[0] + delta
    assume(n >= 0)
    Xbad = np.ones((X.shape[0], n), dtype=dtype)
    for module in MODULES:
        for call in _calls(module, W, b, acts, Xbad, Y):
            with pytest.raises(ValueError, match="X"):
                call()


@given(problems(), st.integers(-3, 3).filter(lambda d: d != 0))
@HYP
def test_random_wrong_Y_columns_raise(problem, delta):
    sizes, acts, W, b, X, Y, dtype = problem
    n = sizes[-1] + delta
    assume(n >= 0)
    Ybad = np.ones((X.shape[0], n), dtype=dtype)
    for module in MODULES:
        for call in _calls(module, W, b, acts, X, Ybad)[1:]:
            with pytest.raises(ValueError, match="Y"):
                call()


@given(problems(), st.integers(-5, 5).filter(lambda d: d != 0))
@HYP
def test_random_row_mismatch_raises(problem, delta):
    sizes, acts, W, b, X, Y, dtype = problem
    rows = X.shape[0] + delta
    assume(rows >= 1)
    Ybad = np.ones((rows, sizes[-1]), dtype=dtype)
    for module in MODULES:
        for call in _calls(module, W, b, acts, X, Ybad)[1:]:
            with pytest.raises(ValueError, match="Y"):
                call()


@given(problems(), st.sampled_from(["X", "Y", "W", "b"]), st.integers(0, 4), st.data())
@HYP
def test_random_wrong_ndim_raises(problem, target, ndim, data):
    sizes, acts, W, b, X, Y, dtype = problem
    good = {"X": 2, "Y": 2, "W": 2, "b": 1}[target]
    assume(ndim != good)
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    bad = np.ones(shape, dtype=dtype)
    W, b = list(W), list(b)
    if target == "X":
        X, name = bad, "X"
    elif target == "Y":
        Y, name = bad, "Y"
    else:
        l = data.draw(st.integers(0, len(W) - 1))
        if target == "W":
            W[l], name = bad, f"weights[{l}]"
        else:
            b[l], name = bad, f"biases[{l}]"
    for module in MODULES:
        calls = _calls(module, W, b, acts, X, Y)
        if target == "Y":
            calls = calls[1:]
        for call in calls:
            with pytest.raises(ValueError, match=_name(name)):
                call()


@given(problems(), st.sampled_from(["X", "Y", "W", "b"]),
       st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
@HYP
def test_random_non_finite_injection_raises(problem, target, value, data):
    sizes, acts, W, b, X, Y, dtype = problem
    W, b, X, Y = [w.copy() for w in W], [v.copy() for v in b], X.copy(), Y.copy()
    if target in ("X", "Y"):
        arr, name = (X, "X") if target == "X" else (Y, "Y")
    else:
        l = data.draw(st.integers(0, len(W) - 1))
        arr, name = (W[l], f"weights[{l}]") if target == "W" else (b[l], f"biases[{l}]")
    k = data.draw(st.integers(0, arr.size - 1))
    arr.flat[k] = value
    for module in MODULES:
        calls = _calls(module, W, b, acts, X, Y)
        if target == "Y":
            calls = calls[1:]
        for call in calls:
            with pytest.raises(ValueError, match=_name(name)):
                call()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unaligned_inputs_are_accepted(dtype):
    """An unaligned view (e.g. data unpickled from a byte buffer) is copied, not refused."""
    sizes = (5, 4, 3)
    W, b = make_params(sizes, dtype, seed=1)
    X, Y = make_data(sizes, 9, dtype, seed=2)
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(X.nbytes + 1, dtype=np.uint8)
    Xu = np.frombuffer(raw.data, dtype=dtype, count=X.size, offset=1).reshape(X.shape)
    raw[1:] = np.frombuffer(X.tobytes(), dtype=np.uint8)
    assert not Xu.flags.aligned and itemsize > 1
    E, dW, db = bpfast.backprop(W, b, "tanh", Xu, Y)
    E_ref, dW_ref, db_ref = bpfast.backprop(W, b, "tanh", X, Y)
    assert E == E_ref
    for got, want in zip(dW + db, dW_ref + db_ref):
        np.testing.assert_array_equal(got, want)
