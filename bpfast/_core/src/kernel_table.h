/* The one table of kernels that dispatch.c fills at import, and what the kernels and their
 * callers agree on (activation codes, size limits).
 *
 * Each kernel family is written once (the *.inc sources) and compiled once per target by
 * a wrapper translation unit (dispatch_baseline.c, dispatch_avx2.c, dispatch_avx512.c),
 * whose copies are static; each wrapper exports only a function that fills the table
 * with its copies. BPFAST_KERNELS lists the kernels every target has,
 * BPFAST_KERNELS_TILES the register-tile kernels of the AVX2 and AVX-512 targets (tiles.h)
 * and BPFAST_KERNELS_PANEL the panel kernel of those targets where its thread pool runs
 * (panel.h); each left NULL where not compiled: callers check their availability
 * functions first. X(return type, name, parameter list).
 */
#ifndef BPFAST_KERNEL_TABLE_H
#define BPFAST_KERNEL_TABLE_H

#include <stddef.h>

/* The activations, under the codes of bpfast/registry.py (tests/test_registry.py checks
 * them; the compiled core's Cython names are these constants). A kernel that applies one
 * of a family takes its code, or -1 for none: the piecewise-linear ones (identity, relu,
 * leaky relu: pointwise.inc, layer_forward.inc), those whose derivative is a function of
 * a = g(z) alone (sigmoid: a (1 - a); tanh: 1 - a^2; exp: a), and those of the fused
 * bias passes (sigmoid, tanh, exp, silu: pointwise_fused.inc). */
enum {
    BPFAST_IDENTITY = 0,
    BPFAST_SIGMOID = 1,
    BPFAST_TANH = 2,
    BPFAST_RELU = 3,
    BPFAST_LEAKY_RELU = 4,
    BPFAST_SOFTPLUS = 5,
    BPFAST_SILU = 6,
    BPFAST_SOFTMAX = 7, /* output layer only: a_j = e^(z_j) / sum_k e^(z_k) over one row */
    BPFAST_EXP = 8
};

/* One optimizer step's rule and coefficients (update.inc's formulas), built once per
 * layer by the caller; float kernels round each coefficient to float once. */
typedef struct {
    int adam;      /* Adam, else SGD (with momentum when there is a velocity array) */
    int nesterov;  /* Nesterov's momentum */
    double lr, mu, beta1, beta2, eps;
    double lr_t;   /* Adam's bias-corrected step size at this step */
    double l2;     /* the L2 term's coefficient in the gradient (0 for biases) */
} bpfast_step_rule;

/* One call of layer_forward.inc's fused layer products (see there), double and float:
 * the forward one reads rows, W and b and writes A (and Z when store_z); the backward one
 * reads dZ, W and the activations A, and writes the delta below into Z and its column
 * sums into db. W's and Z's rows are ldw and ldz entries apart. */
#define BPFAST_DEFINE_LAYER_IO(T, SFX)                                                  \
typedef struct {                                                                        \
    int m, n_in, n;        /* rows; W is n_in x n */                                    \
    const T *const *rows;  /* forward: row p of X */                                    \
    const T *dZ;           /* backward: the layer above's delta, m x n_in */            \
    const T *W;                                                                         \
    ptrdiff_t ldw;                                                                      \
    const T *b;            /* forward: the bias */                                      \
    T *Z, *A;                                                                           \
    ptrdiff_t ldz;                                                                      \
    T *db;                 /* backward: the delta's column sums */                      \
    int kind;              /* the piecewise-linear activation's code, or -1 (forward) */ \
    int store_z;           /* forward: whether Z is written (A always is) */            \
} bpfast_layer_io_##SFX;
BPFAST_DEFINE_LAYER_IO(double, d)
BPFAST_DEFINE_LAYER_IO(float, f)
#undef BPFAST_DEFINE_LAYER_IO

/* widest row softmax_rows takes (the caller checks) */
#define BPFAST_SOFTMAX_MAX_N 16
/* one-row products of at most this many multiply-adds take the vector-product kernels */
#define BPFAST_VECTOR_PRODUCT_LIMIT 65536

#define BPFAST_KERNELS_OF(X, T, SFX)                                                       \
    X(void, bpfast_bias_pwl_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n, const T *b, T *Z,  \
                                 T *A))                                                    \
    X(void, bpfast_delta_pwl_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n, const T *dA,      \
                                  T *Z, T *db))                                            \
    X(void, bpfast_bias_add_##SFX, (ptrdiff_t m, ptrdiff_t n, const T *b, T *Z))           \
    X(void, bpfast_delta_from_a_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n, const T *dA,   \
                                     const T *A, T *Z, T *db))                             \
    X(double, bpfast_mse_delta_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n, const T *A,     \
                                    const T *Y, const T *w, T denom, T *Z, T *db))         \
    X(double, bpfast_xent_loss_##SFX, (int binary, ptrdiff_t N, const T *A, const T *Y,    \
                                    T eps))                                                \
    X(double, bpfast_max_abs_##SFX, (const T *x, ptrdiff_t n))                             \
    X(double, bpfast_update_##SFX, (ptrdiff_t n, T *P, const T *G, T *V, T *S,             \
                                 const bpfast_step_rule *rule))                            \
    X(void, bpfast_exp_row_##SFX, (ptrdiff_t n, const T *z, T *a))                         \
    X(void, bpfast_tanh_row_##SFX, (ptrdiff_t n, const T *z, T *a))                        \
    X(void, bpfast_sigmoid_row_##SFX, (ptrdiff_t n, const T *z, T *a))                     \
    X(void, bpfast_silu_row_##SFX, (ptrdiff_t n, const T *z, T *a))                        \
    X(void, bpfast_softmax_rows_##SFX, (ptrdiff_t m, ptrdiff_t n, const T *b, T *Z, T *A)) \
    X(void, bpfast_pw_bias_act_##SFX, (int act, ptrdiff_t m, ptrdiff_t n, const T *b,      \
                                    T *Z, T *A))                                           \
    X(void, bpfast_pw_delta_from_a_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n,             \
                                        const T *dA, const T *A, T *Z, T *db))             \
    X(double, bpfast_pw_mse_delta_##SFX, (int kind, ptrdiff_t m, ptrdiff_t n, const T *A,  \
                                       const T *Y, const T *w, T denom, T *Z, T *db))

#define BPFAST_KERNELS(X)                                                               \
    BPFAST_KERNELS_OF(X, double, d)                                                     \
    BPFAST_KERNELS_OF(X, float, f)                                                      \
    X(void, bpfast_small_dgemm, (int trans_a, int trans_b, int m, int n, int k,         \
                                 double alpha, const double *a, int lda, const double *b,\
                                 int ldb, double beta, double *c, int ldc))             \
    X(void, bpfast_small_sgemm, (int trans_a, int trans_b, int m, int n, int k,         \
                                 float alpha, const float *a, int lda, const float *b,  \
                                 int ldb, float beta, float *c, int ldc))

/* register tiles: layer_forward.inc, grad_update.inc, vector_products.inc */
#define BPFAST_KERNELS_TILES_OF(X, T, SFX)                                              \
    X(void, bpfast_layer_forward_##SFX, (const bpfast_layer_io_##SFX *io))               \
    X(void, bpfast_layer_forward_##SFX##_back, (const bpfast_layer_io_##SFX *io))        \
    X(double, bpfast_grad_update_##SFX, (int m, int R, int C, const T *A, ptrdiff_t lda,   \
                                      const T *const *arows, const T *B, ptrdiff_t ldb, \
                                      T *P, ptrdiff_t ldp, T *V, T *S,                  \
                                      const bpfast_step_rule *rule))                    \
    X(void, bpfast_vp_##SFX##_vecmat, (int n, int k, T alpha, const T *a, const T *B,   \
                                    int ldb, T beta, T *c))                             \
    X(void, bpfast_vp_##SFX##_matvec, (int n, int k, T alpha, const T *a, const T *B,   \
                                    int ldb, T beta, T *c))                             \
    X(void, bpfast_vp_##SFX##_rank1, (int m, int n, T alpha, const T *x, const T *y,    \
                                   T beta, T *C, int ldc))

#define BPFAST_KERNELS_PANEL_OF(X, T, SFX)                                             \
    X(void, bpfast_panel_##SFX, (int trans_a, int m, int n, int k, T alpha, const T *A,    \
                              int lda, const T *B, int ldb, T beta, T *C, int ldc,     \
                              int threads))

#define BPFAST_KERNELS_TILES(X)                                                         \
    BPFAST_KERNELS_TILES_OF(X, double, d)                                               \
    BPFAST_KERNELS_TILES_OF(X, float, f)

/* the panel kernel: the tile targets with its thread pool (BPFAST_HAVE_PANEL, panel.h) */
#define BPFAST_KERNELS_PANEL(X)                                                         \
    BPFAST_KERNELS_PANEL_OF(X, double, d)                                               \
    BPFAST_KERNELS_PANEL_OF(X, float, f)

#define BPFAST_TABLE_FIELD(R, NAME, PARAMS) R (*NAME) PARAMS;
typedef struct {
    BPFAST_KERNELS(BPFAST_TABLE_FIELD)
    BPFAST_KERNELS_TILES(BPFAST_TABLE_FIELD)
    BPFAST_KERNELS_PANEL(BPFAST_TABLE_FIELD)
} bpfast_kernel_table;
#undef BPFAST_TABLE_FIELD

/* Each wrapper translation unit's filler: its copies into the table. */
void bpfast_fill_table_baseline(bpfast_kernel_table *t);
void bpfast_fill_table_avx2(bpfast_kernel_table *t);
void bpfast_fill_table_avx512(bpfast_kernel_table *t);

#endif
