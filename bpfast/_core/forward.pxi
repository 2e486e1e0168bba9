# The forward pass: per layer z = a_prev W^T + b and a = g(z) (the bias and activation
# in one pass where the processor allows), over a batch or in blocks of rows.


cdef extern from "kernels.h" nogil:
    void bpfast_exp_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_exp_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_tanh_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_tanh_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_sigmoid_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_sigmoid_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_silu_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_silu_row_f(Py_ssize_t n, const float* z, float* a)
    double bp_sigmoid_d(double x)
    float bp_sigmoid_f(float x)
    int bpfast_vector_math_allowed
    int bpfast_vector_math()


cdef inline floating vsigmoid(floating z) noexcept nogil:
    """The vectorisable sigmoid of vmath.h (within a few ulp of 1 / (1 + e^-z))."""
    if floating is double:
        return bp_sigmoid_d(z)
    else:
        return bp_sigmoid_f(z)


cdef extern from "kernels.h" nogil:
    void bpfast_bias_pwl_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* b,
                           double* Z, double* A)
    void bpfast_bias_pwl_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* b,
                           float* Z, float* A)
    void bpfast_delta_pwl_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* dA,
                            double* Z, double* db)
    void bpfast_delta_pwl_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* dA,
                            float* Z, float* db)
    void bpfast_bias_add_d(Py_ssize_t m, Py_ssize_t n, const double* b, double* Z)
    void bpfast_bias_add_f(Py_ssize_t m, Py_ssize_t n, const float* b, float* Z)
    double bpfast_xent_loss_d(int binary, Py_ssize_t N, const double* A, const double* Y,
                              double eps)
    double bpfast_xent_loss_f(int binary, Py_ssize_t N, const float* A, const float* Y,
                              float eps)


# The smooth activations' passes: pointwise_fused.inc's on processors with AVX2+FMA or
# AVX-512 (bias and activation in one pass; column sums in registers), else
# pointwise.inc's loops.
cdef extern from "kernels.h" nogil:
    void bpfast_pw_bias_act_d(int act, Py_ssize_t m, Py_ssize_t n, const double* b,
                              double* Z, double* A)
    void bpfast_pw_bias_act_f(int act, Py_ssize_t m, Py_ssize_t n, const float* b,
                              float* Z, float* A)
    void bpfast_pw_delta_from_a_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* dA,
                                  const double* A, double* Z, double* db)
    void bpfast_pw_delta_from_a_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* dA,
                                  const float* A, float* Z, float* db)
    double bpfast_pw_mse_delta_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* A,
                                 const double* Y, const double* w, double denom,
                                 double* Z, double* db)
    double bpfast_pw_mse_delta_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* A,
                                 const float* Y, const float* w, float denom, float* Z,
                                 float* db)


cdef inline int from_a_kind(int code) noexcept nogil:
    """``code`` if its activation's derivative comes from a = g(z) alone (sigmoid, tanh,
    exp: the kernels' "from A" family), else -1."""
    return code if code == SIGMOID or code == TANH or code == EXP else -1


cdef inline int pwl_kind(int code) noexcept nogil:
    """``code`` if its activation is piecewise linear (identity, relu, leaky relu), else -1."""
    return code if code == IDENTITY or code == RELU or code == LEAKY_RELU else -1


cdef extern from "kernels.h" nogil:
    int BPFAST_SOFTMAX_MAX_N
    void bpfast_softmax_rows_d(Py_ssize_t m, Py_ssize_t n, const double* b, double* Z,
                               double* A)
    void bpfast_softmax_rows_f(Py_ssize_t m, Py_ssize_t n, const float* b, float* Z,
                               float* A)


cdef inline void activate_row(int code, Py_ssize_t n, const floating* z,
                              floating* a) noexcept nogil:
    """a = g(z) elementwise over n values (softmax is bias_activate's); each branch is a
    plain loop the compiler specialises."""
    cdef Py_ssize_t j
    if code == IDENTITY:
        for j in range(n):
            a[j] = z[j]
    elif code == SIGMOID:
        if floating is double:
            bpfast_sigmoid_row_d(n, z, a)
        else:
            bpfast_sigmoid_row_f(n, z, a)
    elif code == TANH:
        if floating is double:
            bpfast_tanh_row_d(n, z, a)
        else:
            bpfast_tanh_row_f(n, z, a)
    elif code == RELU:
        for j in range(n):
            a[j] = relu(z[j])
    elif code == LEAKY_RELU:
        for j in range(n):
            a[j] = leaky_relu(z[j])
    elif code == SOFTPLUS:
        for j in range(n):
            a[j] = activate(SOFTPLUS, z[j])
    elif code == SILU:
        if floating is double:
            bpfast_silu_row_d(n, z, a)
        else:
            bpfast_silu_row_f(n, z, a)
    elif code == EXP:
        if floating is double:
            bpfast_exp_row_d(n, z, a)
        else:
            bpfast_exp_row_f(n, z, a)


cdef void bias_activate(int code, int m, int n, const floating* b,
                        floating* Z, floating* A) noexcept nogil:
    """Z += 1 b^T and A = g(Z).

    Piecewise-linear activations: pointwise.inc's loops. Sigmoid, tanh, silu and exp:
    pointwise_fused.inc's single pass (or, without AVX2 or AVX-512, the bias add and then
    the vectorised function once over the whole m x n block: one call per row would pay the
    call and the vector loop's ragged tail once per row, which dominates for narrow
    layers). Softmax: across rows when narrow, else its exponentials over the block. The
    others go row by row while the row is in cache.
    """
    cdef Py_ssize_t i, j, size = <Py_ssize_t>m * n
    cdef floating* z
    cdef floating* a
    cdef floating top, total
    cdef int kind = pwl_kind(code)
    if kind >= 0:
        if floating is double:
            bpfast_bias_pwl_d(kind, m, n, b, Z, A)
        else:
            bpfast_bias_pwl_f(kind, m, n, b, Z, A)
        return
    if code == SOFTMAX and n <= BPFAST_SOFTMAX_MAX_N:  # narrow rows: across rows
        if floating is double:
            bpfast_softmax_rows_d(m, n, b, Z, A)
        else:
            bpfast_softmax_rows_f(m, n, b, Z, A)
        return
    if code == SIGMOID or code == TANH or code == SILU or code == EXP:
        if floating is double:
            bpfast_pw_bias_act_d(code, m, n, b, Z, A)
        else:
            bpfast_pw_bias_act_f(code, m, n, b, Z, A)
        return
    if code == SOFTMAX:
        if floating is double:
            bpfast_bias_add_d(m, n, b, Z)
        else:
            bpfast_bias_add_f(m, n, b, Z)
        for i in range(m):  # a = z - max z, row by row, then e^a over the block
            z = Z + i * n
            a = A + i * n
            top = z[0]
            for j in range(1, n):
                if z[j] > top:
                    top = z[j]
            for j in range(n):
                a[j] = z[j] - top
        if floating is double:
            bpfast_exp_row_d(size, A, A)
        else:
            bpfast_exp_row_f(size, A, A)
        for i in range(m):
            a = A + i * n
            total = 0
            for j in range(n):
                total = total + a[j]
            for j in range(n):
                a[j] = a[j] / total
        return
    for i in range(m):
        z = Z + i * n
        for j in range(n):
            z[j] += b[j]
        activate_row(code, n, z, A + i * n)


cdef inline void layer_product(bint transposed, int m, int n_out, int n_in,
                              const floating* prev, const floating* W,
                              floating* Z) noexcept nogil:
    """Z = prev W^T (m x n_out) for W stored n_out x n_in, or prev W for W stored
    transposed (n_in x n_out)."""
    if transposed:
        gemm(False, False, m, n_out, n_in, <floating>1, prev, n_in, W, n_out,
             <floating>0, Z, n_out)
    else:
        gemm(False, True, m, n_out, n_in, <floating>1, prev, n_in, W, n_in,
             <floating>0, Z, n_out)


cdef void forward_pass(const Net* net, int m, const floating* X,
                       const floating** X_rows) noexcept nogil:
    """Z[l] = A[l-1] W[l]^T + b[l], A[l] = g_l(Z[l]) for l = 0..L-1, with A[-1] = X.

    ``X_rows`` (with W[0] stored transposed, on processors with the tile kernels): row p
    of X is X_rows[p], and the first layer is layer_forward.inc's product with its bias
    and piecewise-linear activation fused in; ``X`` is not read. Then Z[0] is not written
    when only the backward kernel of an optimizer step would read it (it takes the signs
    from A[0]).
    """
    cdef int L = net.L, l, kind
    cdef const int* sizes = net.sizes
    cdef const int* codes = net.codes
    cdef floating** W = <floating**>net.W
    cdef floating** b = <floating**>net.b
    cdef floating** Z = <floating**>net.Z
    cdef floating** A = <floating**>net.A
    cdef bint store_z
    cdef bpfast_layer_io_d io_d
    cdef bpfast_layer_io_f io_f
    cdef const floating* prev = X
    for l in range(L):
        if l == 0 and X_rows != NULL:
            kind = pwl_kind(codes[0])
            # Z[0] is only read by an optimizer step's backward kernel, which takes the
            # signs from A[0], when the layer above is small enough for it: then the
            # forward kernel writes A[0] alone
            store_z = not (L >= 2 and tile_backward(m, sizes[2], sizes[1], codes[0]))
            if floating is double:
                layer_io(m, sizes[0], sizes[1], W[0], Z[0], A[0], kind, &io_d)
                io_d.rows, io_d.b, io_d.store_z = X_rows, b[0], store_z
                bpfast_layer_forward_d(&io_d)
            else:
                layer_io(m, sizes[0], sizes[1], W[0], Z[0], A[0], kind, &io_f)
                io_f.rows, io_f.b, io_f.store_z = X_rows, b[0], store_z
                bpfast_layer_forward_f(&io_f)
            if kind < 0:
                bias_activate(codes[0], m, sizes[1], b[0], Z[0], A[0])
        else:
            layer_product(net.first_t and l == 0, m, sizes[l + 1], sizes[l], prev, W[l],
                          Z[l])
            bias_activate(codes[l], m, sizes[l + 1], b[l], Z[l], A[l])
        prev = A[l]


cdef void blocked_forward(const Net* net, const floating* X, Py_ssize_t n, int block,
                          const floating* W0, floating* out) noexcept nogil:
    """:func:`forward_pass` over n rows taken ``block`` rows at a time, the last layer
    written straight into ``out`` (n x n^L). W[0] is the panel kernel's transposed
    (n^0 x n^1) buffer, into which W0 (n^1 x n^0) is copied first; Z and A have
    ``block`` rows, and A's last entry (the caller's copy of the pointers) is moved
    along ``out`` block by block."""
    cdef Py_ssize_t start = 0
    cdef int L = net.L, mb, n0 = net.sizes[0], nL = net.sizes[L]
    transpose(net.sizes[1], n0, W0, (<floating**>net.W)[0])
    while start < n:
        mb = <int>(n - start if n - start < block else block)
        (<floating**>net.A)[L - 1] = out + start * nL
        forward_pass(net, mb, X + start * n0, NULL)
        start += mb


cdef extern from "kernels.h" nogil:
    # one call of layer_forward.inc's kernels (kernel_table.h)
    ctypedef struct bpfast_layer_io_d:
        int m, n_in, n
        const double** rows
        const double* dZ
        const double* W
        Py_ssize_t ldw
        const double* b
        double* Z
        double* A
        Py_ssize_t ldz
        double* db
        int kind, store_z
    ctypedef struct bpfast_layer_io_f:
        int m, n_in, n
        const float** rows
        const float* dZ
        const float* W
        Py_ssize_t ldw
        const float* b
        float* Z
        float* A
        Py_ssize_t ldz
        float* db
        int kind, store_z
    void bpfast_layer_forward_d(const bpfast_layer_io_d* io)
    void bpfast_layer_forward_f(const bpfast_layer_io_f* io)
    void bpfast_layer_forward_d_back(const bpfast_layer_io_d* io)
    void bpfast_layer_forward_f_back(const bpfast_layer_io_f* io)


cdef inline void layer_io(int m, int n_in, int n, const floating* W, floating* Z,
                          floating* A, int kind, void* io) noexcept nogil:
    """Fill the bpfast_layer_io_d/f at io (of floating's type) with a layer's sizes, its
    weights W (n_in x n, rows n apart), Z and A (m x n) and the activation's kind; the
    caller sets the pass's other fields (rows, b, store_z or dZ, db)."""
    cdef bpfast_layer_io_d* d
    cdef bpfast_layer_io_f* f
    if floating is double:
        d = <bpfast_layer_io_d*>io
        memset(d, 0, sizeof(bpfast_layer_io_d))
        d.m, d.n_in, d.n, d.W, d.ldw, d.Z, d.A, d.ldz, d.kind = m, n_in, n, W, n, Z, A, n, kind
    else:
        f = <bpfast_layer_io_f*>io
        memset(f, 0, sizeof(bpfast_layer_io_f))
        f.m, f.n_in, f.n, f.W, f.ldw, f.Z, f.A, f.ldz, f.kind = m, n_in, n, W, n, Z, A, n, kind
