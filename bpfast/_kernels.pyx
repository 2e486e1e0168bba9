# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled forward pass and back-propagation over all layers of a network.

Shapes follow the NumPy convention, one sample per row (DESIGN.md section 2): for layer
``l`` (0-based here) ``W[l]`` is ``(n[l+1], n[l])``, ``b[l]`` is ``(n[l+1],)``, and
``Z[l]``, ``A[l]`` are ``(m, n[l+1])``. Per layer, in row terms::

    Z = A_prev @ W.T + b        A = g(Z)
    dW = dZ.T @ A_prev          db = dZ.sum(axis=0)        dA_prev = dZ @ W

The Python entry points check every buffer (type, dtype, shape, contiguity) before any
pointer is taken, then run the whole pass without the GIL and without allocating.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cython cimport floating

cimport numpy as cnp
import numpy as np

from ._blas cimport gemm
from ._activation_math cimport (activate, derivative, IDENTITY, SIGMOID, TANH, RELU,
                               LEAKY_RELU, SOFTPLUS, SILU)

cnp.import_array()


# ---------------------------------------------------------------------------
# nogil building blocks over one layer
# ---------------------------------------------------------------------------

cdef inline void activate_row(int code, Py_ssize_t n, const floating* z,
                              floating* a) noexcept nogil:
    """a = g(z) over one row; each branch is a plain loop the compiler specialises."""
    cdef Py_ssize_t j
    if code == IDENTITY:
        for j in range(n):
            a[j] = z[j]
    elif code == SIGMOID:
        for j in range(n):
            a[j] = activate(SIGMOID, z[j])
    elif code == TANH:
        for j in range(n):
            a[j] = activate(TANH, z[j])
    elif code == RELU:
        for j in range(n):
            a[j] = activate(RELU, z[j])
    elif code == LEAKY_RELU:
        for j in range(n):
            a[j] = activate(LEAKY_RELU, z[j])
    elif code == SOFTPLUS:
        for j in range(n):
            a[j] = activate(SOFTPLUS, z[j])
    elif code == SILU:
        for j in range(n):
            a[j] = activate(SILU, z[j])


cdef inline void delta_row(int code, Py_ssize_t n, floating* d, const floating* z,
                           const floating* a) noexcept nogil:
    """d = d (.) g'(z) over one row, with a = g(z)."""
    cdef Py_ssize_t j
    if code == SIGMOID:
        for j in range(n):
            d[j] *= derivative(SIGMOID, z[j], a[j])
    elif code == TANH:
        for j in range(n):
            d[j] *= derivative(TANH, z[j], a[j])
    elif code == RELU:
        for j in range(n):
            d[j] *= derivative(RELU, z[j], a[j])
    elif code == LEAKY_RELU:
        for j in range(n):
            d[j] *= derivative(LEAKY_RELU, z[j], a[j])
    elif code == SOFTPLUS:
        for j in range(n):
            d[j] *= derivative(SOFTPLUS, z[j], a[j])
    elif code == SILU:
        for j in range(n):
            d[j] *= derivative(SILU, z[j], a[j])


cdef void bias_activate(int code, int m, int n, const floating* b,
                        floating* Z, floating* A) noexcept nogil:
    """Z += 1 b^T and A = g(Z), row by row while the row is in cache."""
    cdef Py_ssize_t i, j
    cdef floating* z
    for i in range(m):
        z = Z + i * n
        for j in range(n):
            z[j] += b[j]
        activate_row(code, n, z, A + i * n)


cdef double output_delta(int code, int m, int n, const floating* A, const floating* Y,
                         floating* Z, floating* db) noexcept nogil:
    """dZ = (A - Y) / m (.) g'(Z) written over Z, db = column sums of dZ; returns sum (A - Y)^2."""
    cdef Py_ssize_t i, j, row
    cdef floating r, d
    cdef double sq = 0
    memset(db, 0, n * sizeof(floating))
    for i in range(m):
        row = i * n
        for j in range(n):
            r = A[row + j] - Y[row + j]
            sq += <double>r * r
            d = r / m * derivative(code, Z[row + j], A[row + j])
            Z[row + j] = d
            db[j] += d
    return sq


cdef void hidden_delta(int code, int m, int n, floating* dA, const floating* A,
                       floating* Z, floating* db) noexcept nogil:
    """dZ = dA (.) g'(Z) written over Z, db = column sums of dZ; dA is overwritten."""
    cdef Py_ssize_t i, j
    cdef floating* d
    cdef floating* z
    memset(db, 0, n * sizeof(floating))
    for i in range(m):
        d = dA + i * n
        z = Z + i * n
        delta_row(code, n, d, z, A + i * n)
        for j in range(n):
            z[j] = d[j]
            db[j] += d[j]


# ---------------------------------------------------------------------------
# nogil passes over all layers
# ---------------------------------------------------------------------------

cdef void forward_pass(int L, int m, const int* sizes, const int* codes,
                       const floating* X, floating** W, floating** b,
                       floating** Z, floating** A) noexcept nogil:
    """Z[l] = A[l-1] W[l]^T + b[l], A[l] = g_l(Z[l]) for l = 0..L-1, with A[-1] = X."""
    cdef int l
    cdef const floating* prev = X
    for l in range(L):
        gemm(False, True, m, sizes[l + 1], sizes[l], <floating>1, prev, sizes[l],
             W[l], sizes[l], <floating>0, Z[l], sizes[l + 1])
        bias_activate(codes[l], m, sizes[l + 1], b[l], Z[l], A[l])
        prev = A[l]


cdef double backward_pass(int L, int m, const int* sizes, const int* codes,
                          const floating* X, const floating* Y, floating** W,
                          floating** Z, floating** A, floating** dW, floating** db,
                          floating* scratch) noexcept nogil:
    """Back-propagate E = sum (A[L-1] - Y)^2 / (2m) after forward_pass; returns E.

    Z[l] is overwritten by dZ[l]; scratch (at least m x max n[l]) holds dA[l-1].
    """
    cdef int l
    cdef const floating* prev
    cdef double sq = output_delta(codes[L - 1], m, sizes[L], A[L - 1], Y, Z[L - 1], db[L - 1])
    for l in range(L - 1, -1, -1):
        prev = X if l == 0 else A[l - 1]
        # dW[l] = dZ[l]^T A[l-1]
        gemm(True, False, sizes[l + 1], sizes[l], m, <floating>1, Z[l], sizes[l + 1],
             prev, sizes[l], <floating>0, dW[l], sizes[l])
        if l > 0:
            # dA[l-1] = dZ[l] W[l], then dZ[l-1] = dA[l-1] (.) g'(Z[l-1])
            gemm(False, False, m, sizes[l], sizes[l + 1], <floating>1, Z[l], sizes[l + 1],
                 W[l], sizes[l], <floating>0, scratch, sizes[l])
            hidden_delta(codes[l - 1], m, sizes[l], scratch, A[l - 1], Z[l - 1], db[l - 1])
    return sq / (2.0 * m)


# ---------------------------------------------------------------------------
# Checked access to NumPy buffers
# ---------------------------------------------------------------------------

cdef void* checked_data(object arr, str name, int typenum, Py_ssize_t rows,
                        Py_ssize_t cols, bint writable) except NULL:
    """Pointer to the data of a C-contiguous array of the given dtype and shape.

    ``cols < 0`` asks for a 1-D array of length ``rows``. Any mismatch raises, so no
    pointer is ever taken to a buffer of the wrong size.
    """
    if not cnp.PyArray_Check(arr):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int ndim = 1 if cols < 0 else 2
    if cnp.PyArray_NDIM(a) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {cnp.PyArray_NDIM(a)}")
    if cnp.PyArray_TYPE(a) != typenum:
        expected_dtype = "float64" if typenum == cnp.NPY_DOUBLE else "float32"
        raise TypeError(f"{name}: expected dtype {expected_dtype}, got {a.dtype}")
    if a.shape[0] != rows or (ndim == 2 and a.shape[1] != cols):
        expected = str((rows,)) if ndim == 1 else str((rows, cols))
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(arr.shape)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name}: expected a C-contiguous, aligned array")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name}: expected a writable array")
    return cnp.PyArray_DATA(a)


cdef class Layers:
    """Raw pointers to one network's parameters and buffers for a batch of m rows.

    Built from lists of arrays after checking each of them; the lists are kept alive
    with the object, so the pointers stay valid for its lifetime.
    """
    cdef readonly int L, m, typenum
    cdef int* sizes
    cdef int* codes
    cdef void** W
    cdef void** b
    cdef void** Z
    cdef void** A
    cdef void** dW
    cdef void** db
    cdef object keep

    def __cinit__(self):
        self.sizes = NULL
        self.codes = NULL
        self.W = self.b = self.Z = self.A = self.dW = self.db = NULL

    def __init__(self, list weights, list biases, codes, int n_inputs, int m,
                 list Z, list A, list dW=None, list db=None):
        cdef Py_ssize_t L = len(weights), l
        if L < 1:
            raise ValueError("weights: expected at least one layer")
        if len(biases) != L or len(Z) != L or len(A) != L:
            raise ValueError("biases, Z and A must have one entry per layer")
        if (dW is None) != (db is None) or (dW is not None and (len(dW) != L or len(db) != L)):
            raise ValueError("dW and db must both be given, with one entry per layer")
        if len(codes) != L:
            raise ValueError("codes: expected one activation code per layer")
        if m < 1 or n_inputs < 1:
            raise ValueError("m and n_inputs must be positive")
        self.L = L
        self.m = m
        first = weights[0]
        if not cnp.PyArray_Check(first):
            raise TypeError(f"weights[0]: expected a numpy.ndarray, got {type(first).__name__}")
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray>first)
        if self.typenum != cnp.NPY_DOUBLE and self.typenum != cnp.NPY_FLOAT:
            raise TypeError(f"weights[0]: expected float32 or float64, got {first.dtype}")
        self.keep = (weights, biases, Z, A, dW, db)
        self.sizes = <int*>malloc((L + 1) * sizeof(int))
        self.codes = <int*>malloc(L * sizeof(int))
        self.W = <void**>malloc(L * sizeof(void*))
        self.b = <void**>malloc(L * sizeof(void*))
        self.Z = <void**>malloc(L * sizeof(void*))
        self.A = <void**>malloc(L * sizeof(void*))
        if dW is not None:
            self.dW = <void**>malloc(L * sizeof(void*))
            self.db = <void**>malloc(L * sizeof(void*))
            if self.dW == NULL or self.db == NULL:
                raise MemoryError()
        if (self.sizes == NULL or self.codes == NULL or self.W == NULL or self.b == NULL
                or self.Z == NULL or self.A == NULL):
            raise MemoryError()
        self.sizes[0] = n_inputs
        cdef int t = self.typenum
        for l in range(L):
            code = int(codes[l])
            if code < 0 or code > 6:
                raise ValueError(f"codes[{l}]: unknown activation code {code}")
            self.codes[l] = code
            w = weights[l]
            if not cnp.PyArray_Check(w) or cnp.PyArray_NDIM(<cnp.ndarray>w) != 2:
                raise ValueError(f"weights[{l}]: expected a 2-D numpy.ndarray")
            n = w.shape[0]
            if n < 1 or n > 2147483647:
                raise ValueError(f"weights[{l}]: expected 1 to 2**31-1 rows, got {n}")
            self.sizes[l + 1] = n
            self.W[l] = checked_data(w, f"weights[{l}]", t, n, self.sizes[l], False)
            self.b[l] = checked_data(biases[l], f"biases[{l}]", t, n, -1, False)
            self.Z[l] = checked_data(Z[l], f"Z[{l}]", t, m, n, True)
            self.A[l] = checked_data(A[l], f"A[{l}]", t, m, n, True)
            if dW is not None:
                self.dW[l] = checked_data(dW[l], f"dW[{l}]", t, n, self.sizes[l], True)
                self.db[l] = checked_data(db[l], f"db[{l}]", t, n, -1, True)

    def __dealloc__(self):
        free(self.sizes)
        free(self.codes)
        free(self.W)
        free(self.b)
        free(self.Z)
        free(self.A)
        free(self.dW)
        free(self.db)

    cdef int max_hidden(self) noexcept:
        cdef int l, widest = 1
        for l in range(1, self.L):
            if self.sizes[l] > widest:
                widest = self.sizes[l]
        return widest

    def forward(self, X):
        """Run the forward pass on X (m x n[0]); results land in the A and Z buffers."""
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                forward_pass[double](self.L, self.m, self.sizes, self.codes, <double*>x,
                                     <double**>self.W, <double**>self.b,
                                     <double**>self.Z, <double**>self.A)
        else:
            with nogil:
                forward_pass[float](self.L, self.m, self.sizes, self.codes, <float*>x,
                                    <float**>self.W, <float**>self.b,
                                    <float**>self.Z, <float**>self.A)

    def backprop(self, X, Y, scratch):
        """Forward then backward pass on (X, Y); fills dW and db and returns E."""
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, self.m, self.sizes[self.L], False)
        cdef Py_ssize_t need = <Py_ssize_t>self.m * self.max_hidden()
        cdef void* s = checked_data(scratch, "scratch", self.typenum, need, -1, True)
        cdef double E
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                forward_pass[double](self.L, self.m, self.sizes, self.codes, <double*>x,
                                     <double**>self.W, <double**>self.b,
                                     <double**>self.Z, <double**>self.A)
                E = backward_pass[double](self.L, self.m, self.sizes, self.codes,
                                          <double*>x, <double*>y, <double**>self.W,
                                          <double**>self.Z, <double**>self.A,
                                          <double**>self.dW, <double**>self.db, <double*>s)
        else:
            with nogil:
                forward_pass[float](self.L, self.m, self.sizes, self.codes, <float*>x,
                                    <float**>self.W, <float**>self.b,
                                    <float**>self.Z, <float**>self.A)
                E = backward_pass[float](self.L, self.m, self.sizes, self.codes,
                                         <float*>x, <float*>y, <float**>self.W,
                                         <float**>self.Z, <float**>self.A,
                                         <float**>self.dW, <float**>self.db, <float*>s)
        return E
