# cython: language_level=3
"""Row-major GEMM on top of SciPy's Fortran BLAS (``scipy.linalg.cython_blas``)."""
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C = alpha op(A) op(B) + beta C, all row-major; C is m x n, op(A) m x k, op(B) k x n.

    A row-major matrix is the column-major view of its transpose, so this is the
    column-major product C^T = op(B)^T op(A)^T with the operands swapped.
    """
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if floating is double:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
    else:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
