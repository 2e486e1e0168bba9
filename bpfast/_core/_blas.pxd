# cython: language_level=3
"""Row-major GEMM: a Fortran BLAS found at run time (NumPy's OpenBLAS, or SciPy's
``cython_blas``) for large products, plain vectorised loops (``small_gemm.inc``) for small
ones and whenever no BLAS has been set, register loops for one-row products
(``vector_products.inc`` on processors with AVX2 or AVX-512) and unpacked, threaded tiles
for mid-sized ones (``panel_gemm.inc`` on processors with AVX2 or AVX-512)."""
from cython cimport floating

cdef extern from "kernels.h" nogil:
    void bpfast_small_dgemm(int trans_a, int trans_b, int m, int n, int k, double alpha,
                            const double* a, int lda, const double* b, int ldb,
                            double beta, double* c, int ldc)
    void bpfast_small_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                            const float* a, int lda, const float* b, int ldb,
                            float beta, float* c, int ldc)

# Function pointers to a BLAS's Fortran dgemm/sgemm (NumPy's OpenBLAS or SciPy's
# cython_blas), set from Python by bpfast._core.kernels.set_blas when bpfast is imported; NULL
# means none was found, and every product takes the plain loops. ILP64 libraries take
# 64-bit integers. Finding the functions at run time, rather than cimporting SciPy's,
# keeps SciPy (27 MB of resident memory) out of ``import bpfast``.
cdef extern from *:
    """
    #include <stdint.h>
    typedef void (*bpfast_dgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
        const int64_t*, const double*, const double*, const int64_t*, const double*,
        const int64_t*, const double*, double*, const int64_t*);
    typedef void (*bpfast_sgemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
        const int64_t*, const float*, const float*, const int64_t*, const float*,
        const int64_t*, const float*, float*, const int64_t*);
    typedef void (*bpfast_dgemm32_t)(const char*, const char*, const int*, const int*,
        const int*, const double*, const double*, const int*, const double*,
        const int*, const double*, double*, const int*);
    typedef void (*bpfast_sgemm32_t)(const char*, const char*, const int*, const int*,
        const int*, const float*, const float*, const int*, const float*,
        const int*, const float*, float*, const int*);
    static void *bpfast_dgemm_ptr = NULL;
    static void *bpfast_sgemm_ptr = NULL;
    static int bpfast_blas_ilp64 = 0;

    /* NAME(...) calls the BLAS's ?gemm at PTR (of type T64 or T32) with 64-bit
       integers (ILP64 builds) or 32-bit ones */
    #define BPFAST_DEFINE_EXT_GEMM(T, NAME, PTR, T64, T32)                              \\
    static void NAME(char ta, char tb, int m, int n, int k, T alpha, const T *a,        \\
                     int lda, const T *b, int ldb, T beta, T *c, int ldc)               \\
    {                                                                                   \\
        if (bpfast_blas_ilp64) {                                                        \\
            int64_t M = m, N = n, K = k, LA = lda, LB = ldb, LC = ldc;                  \\
            ((T64)PTR)(&ta, &tb, &M, &N, &K, &alpha, a, &LA, b, &LB, &beta, c, &LC);    \\
        } else {                                                                        \\
            ((T32)PTR)(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc); \\
        }                                                                               \\
    }
    BPFAST_DEFINE_EXT_GEMM(double, bpfast_ext_dgemm, bpfast_dgemm_ptr, bpfast_dgemm64_t,
                           bpfast_dgemm32_t)
    BPFAST_DEFINE_EXT_GEMM(float, bpfast_ext_sgemm, bpfast_sgemm_ptr, bpfast_sgemm64_t,
                           bpfast_sgemm32_t)
    """
    void* bpfast_dgemm_ptr
    void* bpfast_sgemm_ptr
    int bpfast_blas_ilp64
    void bpfast_ext_dgemm(char ta, char tb, int m, int n, int k, double alpha,
                          const double* a, int lda, const double* b, int ldb,
                          double beta, double* c, int ldc) nogil
    void bpfast_ext_sgemm(char ta, char tb, int m, int n, int k, float alpha,
                          const float* a, int lda, const float* b, int ldb,
                          float beta, float* c, int ldc) nogil

# Products with m * n * k up to this many multiply-adds take the plain-loop path: OpenBLAS's
# small-matrix kernels win above it (docs/performance.md has the figures).
# Set from Python through bpfast.engine.tuning(small_gemm_limit=...) (tests force each
# path); defined in _core/src/routes.c.
cdef extern from "kernels.h":
    long long bpfast_small_gemm_limit


cdef extern from "kernels.h" nogil:
    long long BPFAST_VECTOR_PRODUCT_LIMIT
    int bpfast_vector_products_allowed
    int bpfast_vector_products()
    void bpfast_vp_d_vecmat(int n, int k, double alpha, const double* a, const double* B,
                            int ldb, double beta, double* c)
    void bpfast_vp_f_vecmat(int n, int k, float alpha, const float* a, const float* B,
                            int ldb, float beta, float* c)
    void bpfast_vp_d_matvec(int n, int k, double alpha, const double* a, const double* B,
                            int ldb, double beta, double* c)
    void bpfast_vp_f_matvec(int n, int k, float alpha, const float* a, const float* B,
                            int ldb, float beta, float* c)
    void bpfast_vp_d_rank1(int m, int n, double alpha, const double* x, const double* y,
                           double beta, double* C, int ldc)
    void bpfast_vp_f_rank1(int m, int n, float alpha, const float* x, const float* y,
                           float beta, float* C, int ldc)


cdef extern from "kernels.h" nogil:
    int bpfast_panel_route(int trans_b, int m, int n, int k, int size)
    int bpfast_panel_threads_for(int m, int n, int k)
    void bpfast_panel_d(int trans_a, int m, int n, int k, double alpha, const double* A,
                        int lda, const double* B, int ldb, double beta, double* C, int ldc,
                        int threads)
    void bpfast_panel_f(int trans_a, int m, int n, int k, float alpha, const float* A,
                        int lda, const float* B, int ldb, float beta, float* C, int ldc,
                        int threads)


cdef inline bint one_row(int m, int n, int k) noexcept nogil:
    """Whether a product is one of a batch of one row (m = 1 for the forward product and
    dA, k = 1 for the weight update) that skips the BLAS, whose set-up outweighs it: at
    most BPFAST_VECTOR_PRODUCT_LIMIT multiply-adds, with the vector_products switch on."""
    return ((m == 1 or k == 1) and bpfast_vector_products_allowed
            and <long long>m * n * k <= BPFAST_VECTOR_PRODUCT_LIMIT)


cdef inline bint vector_product(bint trans_a, bint trans_b, int m, int n, int k,
                                floating alpha, const floating* a, const floating* b,
                                int ldb, floating beta, floating* c,
                                int ldc) noexcept nogil:
    """A one-row product through vector_products.inc, where AVX2 or AVX-512 runs; False
    when not taken (elsewhere small_gemm.inc's loops take it, see :func:`gemm`)."""
    if not bpfast_vector_products():
        return False
    if m == 1 and not trans_a:
        if trans_b:  # c = alpha a B^T + beta c
            if floating is double:
                bpfast_vp_d_matvec(n, k, alpha, a, b, ldb, beta, c)
            else:
                bpfast_vp_f_matvec(n, k, alpha, a, b, ldb, beta, c)
        elif floating is double:  # c = alpha a B + beta c
            bpfast_vp_d_vecmat(n, k, alpha, a, b, ldb, beta, c)
        else:
            bpfast_vp_f_vecmat(n, k, alpha, a, b, ldb, beta, c)
        return True
    if k == 1 and trans_a and not trans_b:  # C = alpha a^T b + beta C (a: 1 x m row)
        if floating is double:
            bpfast_vp_d_rank1(m, n, alpha, a, b, beta, c, ldc)
        else:
            bpfast_vp_f_rank1(m, n, alpha, a, b, beta, c, ldc)
        return True
    return False


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C = alpha op(A) op(B) + beta C, all row-major; C is m x n, op(A) m x k, op(B) k x n.

    A row-major matrix is the column-major view of its transpose, so this is the
    column-major product C^T = op(B)^T op(A)^T with the operands swapped.
    """
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef bint one_row_product = one_row(m, n, k)
    if one_row_product and vector_product(trans_a, trans_b, m, n, k, alpha, a, b, ldb, beta,
                                          c, ldc):
        return
    if bpfast_panel_route(trans_b, m, n, k, sizeof(floating)):  # mid-sized, in cache
        if floating is double:
            bpfast_panel_d(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           bpfast_panel_threads_for(m, n, k))
        else:
            bpfast_panel_f(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           bpfast_panel_threads_for(m, n, k))
        return
    if (<long long>m * n * k <= bpfast_small_gemm_limit or one_row_product
            or bpfast_dgemm_ptr == NULL):
        if floating is double:
            bpfast_small_dgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        else:
            bpfast_small_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif floating is double:
        bpfast_ext_dgemm(ta, tb, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)
    else:
        bpfast_ext_sgemm(ta, tb, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)
