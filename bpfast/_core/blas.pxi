# The BLAS found at run time (set by bpfast._blas_backend), and the probes of gemm's
# routes.


def set_blas_threads_function(size_t address):
    """The BLAS's ``int get_num_threads(void)``, which the panel kernel follows (0: none,
    and mid-sized products then stay with the BLAS). Private: set by _blas_backend."""
    global bpfast_blas_threads_ptr
    bpfast_blas_threads_ptr = <void*>address


def set_blas(size_t dgemm_address, size_t sgemm_address, bint ilp64):
    """Call this dgemm/sgemm (Fortran interface) for large products; 0, 0 for none (then
    every product takes the plain loops).

    Private: bpfast._blas_backend finds the addresses and checks them with gemm_probe.
    """
    global bpfast_dgemm_ptr, bpfast_sgemm_ptr, bpfast_blas_ilp64
    if (dgemm_address == 0) != (sgemm_address == 0):
        raise ValueError("set_blas: give both addresses or neither")
    bpfast_dgemm_ptr = <void*>dgemm_address
    bpfast_sgemm_ptr = <void*>sgemm_address
    bpfast_blas_ilp64 = ilp64


def gemm_call(bint trans_a, bint trans_b, double alpha, A, B, double beta, C):
    """C = alpha op(A) op(B) + beta C in place, through the kernels' gemm with all its
    routes (one-row vector products, plain loops, BLAS); for tests. A, B, C: C-contiguous
    arrays of one float dtype, op(X) = X.T when trans_x."""
    arrays = (A, B, C)
    if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.flags.c_contiguous
               for x in arrays) or not (A.dtype == B.dtype == C.dtype) or \
            A.dtype not in (np.float32, np.float64) or not C.flags.writeable:
        raise ValueError("gemm_call: expected C-contiguous 2-D float arrays of one dtype")
    cdef int m = C.shape[0], n = C.shape[1]
    cdef int k = A.shape[0] if trans_a else A.shape[1]
    if (A.shape[1] if trans_a else A.shape[0]) != m or \
            (B.shape[0] if trans_b else B.shape[1]) != n or \
            (B.shape[1] if trans_b else B.shape[0]) != k:
        raise ValueError("gemm_call: shapes do not match")
    cdef int lda = A.shape[1], ldb = B.shape[1], ldc = n
    cdef void* a = cnp.PyArray_DATA(A)
    cdef void* b = cnp.PyArray_DATA(B)
    cdef void* c = cnp.PyArray_DATA(C)
    bpfast_set_panel_scope(1)  # every route, the panel kernel's included
    if A.dtype == np.float64:
        gemm[double](trans_a, trans_b, m, n, k, alpha, <double*>a, lda, <double*>b, ldb,
                     beta, <double*>c, ldc)
    else:
        gemm[float](trans_a, trans_b, m, n, k, <float>alpha, <float*>a, lda, <float*>b,
                    ldb, <float>beta, <float*>c, ldc)
    bpfast_set_panel_scope(0)


def gemm_probe(A, B):
    """A @ B.T through the kernels' BLAS route (never the plain-loop path); for checks."""
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B, dtype=A.dtype)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or A.dtype not in (np.float32, np.float64):
        raise ValueError("gemm_probe: expected 2-D float arrays with equal column counts")
    C = np.empty((A.shape[0], B.shape[0]), dtype=A.dtype)
    cdef int m = A.shape[0], n = B.shape[0], k = A.shape[1]
    cdef long long saved = bpfast_small_gemm_limit
    cdef void* a = cnp.PyArray_DATA(A)
    cdef void* b = cnp.PyArray_DATA(B)
    cdef void* c = cnp.PyArray_DATA(C)
    global bpfast_small_gemm_limit
    bpfast_small_gemm_limit = -1
    try:
        if A.dtype == np.float64:
            gemm[double](False, True, m, n, k, 1.0, <double*>a, k, <double*>b, k, 0.0,
                         <double*>c, n)
        else:
            gemm[float](False, True, m, n, k, 1.0, <float*>a, k, <float*>b, k, 0.0,
                        <float*>c, n)
    finally:
        bpfast_small_gemm_limit = saved
    return C
