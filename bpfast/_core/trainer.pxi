# The classes Python sees: Layers (forward and back-propagation into preallocated
# buffers) and Trainer (a fit's buffers, optimizer state and epochs). Every buffer is
# checked before a pointer to it is taken.


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
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{name}: expected native byte order, got dtype {a.dtype.str}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name}: expected a C-contiguous, aligned array")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name}: expected a writable array")
    return cnp.PyArray_DATA(a)


cdef int check_permutation(const Py_ssize_t* order, Py_ssize_t n) except -1:
    """Raise unless order[0..n) holds every index 0..n-1 exactly once (O(n))."""
    cdef unsigned char* seen = <unsigned char*>calloc(n, 1)
    cdef Py_ssize_t i, k
    if seen == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            k = order[i]
            if k < 0 or k >= n or seen[k]:
                raise ValueError("order: expected a permutation of range(n_samples)")
            seen[k] = 1
    finally:
        free(seen)
    return 0


cdef class Layers:
    """Raw pointers to one network's parameters and buffers for a batch of m rows.

    Built from lists of arrays after checking each of them; the lists are kept alive
    with the object, so the pointers stay valid for its lifetime.
    """
    cdef readonly int L, m, typenum
    cdef bint ready
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
        self.ready = False
        self.sizes = NULL
        self.codes = NULL
        self.W = self.b = self.Z = self.A = self.dW = self.db = NULL

    def __init__(self, list weights, list biases, codes, int n_inputs, int m,
                 list Z, list A, list dW=None, list db=None):
        cdef Py_ssize_t L = len(weights), l
        if self.sizes != NULL:
            raise RuntimeError("Layers objects cannot be initialised twice")
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
        # Private copies of the lists: the caller editing theirs cannot free our arrays.
        weights, biases, Z, A = list(weights), list(biases), list(Z), list(A)
        dW = None if dW is None else list(dW)
        db = None if db is None else list(db)
        self.keep = (weights, biases, Z, A, dW, db)
        self.sizes = <int*>calloc(L + 1, sizeof(int))
        self.codes = <int*>calloc(L, sizeof(int))
        self.W = <void**>calloc(L, sizeof(void*))
        self.b = <void**>calloc(L, sizeof(void*))
        self.Z = <void**>calloc(L, sizeof(void*))
        self.A = <void**>calloc(L, sizeof(void*))
        if dW is not None:
            self.dW = <void**>calloc(L, sizeof(void*))
            self.db = <void**>calloc(L, sizeof(void*))
            if self.dW == NULL or self.db == NULL:
                raise MemoryError()
        if (self.sizes == NULL or self.codes == NULL or self.W == NULL or self.b == NULL
                or self.Z == NULL or self.A == NULL):
            raise MemoryError()
        self.sizes[0] = n_inputs
        cdef int t = self.typenum
        for l in range(L):
            code = int(codes[l])
            if code < 0 or code > 8 or (code == SOFTMAX and l != L - 1):
                raise ValueError(f"codes[{l}]: activation code {code} is not valid here")
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
        self.ready = True

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

    cdef Net network(self, void* scratch) noexcept:
        """This object's buffers as the passes take them (no optimizer state)."""
        cdef Net net
        memset(&net, 0, sizeof(Net))
        net.L = self.L
        net.sizes = self.sizes
        net.codes = self.codes
        net.W = self.W
        net.b = self.b
        net.Z = self.Z
        net.A = self.A
        net.dW = self.dW
        net.db = self.db
        net.scratch = scratch
        return net

    def parameters_finite(self):
        """True if every weight and bias is finite (one vectorised pass, no copies)."""
        self.check_ready()
        cdef bint ok
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                ok = all_finite[double](self.L, self.sizes, <double**>self.W,
                                        <double**>self.b)
            else:
                ok = all_finite[float](self.L, self.sizes, <float**>self.W,
                                       <float**>self.b)
        return ok

    cdef int check_ready(self) except -1:
        if not self.ready:
            raise RuntimeError("this object was not (successfully) initialised")
        return 0

    def forward(self, X):
        """Run the forward pass on X (m x n[0]); results land in the A and Z buffers."""
        self.check_ready()
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        cdef Net net = self.network(NULL)
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                forward_pass[double](&net, self.m, <double*>x, NULL)
            else:
                forward_pass[float](&net, self.m, <float*>x, NULL)

    def backprop(self, X, Y, scratch):
        """Forward then backward pass on (X, Y); fills dW and db and returns E."""
        self.check_ready()
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, self.m, self.sizes[self.L], False)
        cdef Py_ssize_t need = <Py_ssize_t>self.m * self.max_hidden()
        cdef void* s = checked_data(scratch, "scratch", self.typenum, need, -1, True)
        cdef Net net = self.network(s)
        cdef Batch batch = whole_batch(self.m, y, NULL)
        cdef double E
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                E = squared_error_gradient[double](&net, <double*>x, &batch)
            else:
                E = squared_error_gradient[float](&net, <float*>x, &batch)
        return E

    def forward_blocks(self, X, out, W0T):
        """:meth:`forward` over all rows of X, m rows (this object's batch) at a time in
        the panel kernel's scope (see :func:`backprop_block_rows`), the outputs written
        to ``out`` (rows of X x n^L). ``W0T`` (n^0 x n^1) takes the first layer's weights
        transposed. The one-pass forward's values to rounding (the panel kernel adds each
        entry's terms in order, OpenBLAS in its own blocks). Where the one-pass forward's
        products went to OpenBLAS's threads, whose workers keep spinning for a while after
        each product, the training epoch that followed (fitting with validation data)
        found its second core taken."""
        self.check_ready()
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a 2-D array with at least one row")
        cdef int L = self.L, n0 = self.sizes[0], n1 = self.sizes[1]
        cdef void* x = checked_data(X, "X", self.typenum, n, n0, False)
        cdef void* o = checked_data(out, "out", self.typenum, n, self.sizes[L], True)
        cdef void* wt = checked_data(W0T, "W0T", self.typenum, n0, n1, True)
        cdef Net net = self.network(NULL)
        net.first_t = True
        net.W = with_first(self.W, L, wt)
        # a copy of the A pointers, whose last entry blocked_forward moves along out
        net.A = with_first(self.A, L, self.A[0])
        if net.W == NULL or net.A == NULL:
            free(net.W)
            free(net.A)
            raise MemoryError()
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                blocked_forward[double](&net, <double*>x, n, self.m, <double*>self.W[0],
                                        <double*>o)
            else:
                blocked_forward[float](&net, <float*>x, n, self.m, <float*>self.W[0],
                                       <float*>o)
            bpfast_set_panel_scope(0)
        free(net.W)
        free(net.A)

    def backprop_blocks(self, X, Y, scratch, W0T, dW0T, db_block):
        """:meth:`backprop` over all rows of (X, Y), taken m rows (this object's batch)
        at a time in the panel kernel's scope (see :func:`backprop_block_rows` and
        :func:`blocked_backprop`); fills dW and db and returns E.

        ``W0T`` and ``dW0T`` (n^0 x n^1) take the first layer's weights and gradient
        transposed; ``db_block`` has room for sum n^l values; none is read before it is
        written."""
        self.check_ready()
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a 2-D array with at least one row")
        cdef int L = self.L, n0 = self.sizes[0], n1 = self.sizes[1], l
        cdef Py_ssize_t total = 0
        for l in range(L):
            total += self.sizes[l + 1]
        cdef void* x = checked_data(X, "X", self.typenum, n, n0, False)
        cdef void* y = checked_data(Y, "Y", self.typenum, n, self.sizes[L], False)
        cdef void* s = checked_data(scratch, "scratch", self.typenum,
                                    <Py_ssize_t>self.m * self.max_hidden(), -1, True)
        cdef void* wt = checked_data(W0T, "W0T", self.typenum, n0, n1, True)
        cdef void* dwt = checked_data(dW0T, "dW0T", self.typenum, n0, n1, True)
        cdef char* dbb = <char*>checked_data(db_block, "db_block", self.typenum, total, -1,
                                             True)
        cdef int itemsize = 8 if self.typenum == cnp.NPY_DOUBLE else 4
        cdef Net net = self.network(s)
        cdef double E
        net.first_t = True
        net.W = with_first(self.W, L, wt)
        net.dW = with_first(self.dW, L, dwt)
        # each block's bias gradients, one layer after the other in db_block
        net.db = <void**>malloc(L * sizeof(void*))
        if net.W == NULL or net.dW == NULL or net.db == NULL:
            free(net.W)
            free(net.dW)
            free(net.db)
            raise MemoryError()
        for l in range(L):
            net.db[l] = dbb
            dbb += <Py_ssize_t>self.sizes[l + 1] * itemsize
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                E = blocked_backprop[double](&net, <double*>x, <double*>y, n, self.m,
                                             <double*>self.W[0], <double*>self.dW[0],
                                             self.db)
            else:
                E = blocked_backprop[float](&net, <float*>x, <float*>y, n, self.m,
                                            <float*>self.W[0], <float*>self.dW[0],
                                            self.db)
            bpfast_set_panel_scope(0)
        free(net.W)
        free(net.dW)
        free(net.db)
        return E


cdef inline double in_dtype(double x, bint single) noexcept nogil:
    """x as the network's dtype holds it (rounded to float for a float32 network)."""
    return <float>x if single else x


cdef inline Batch whole_batch(int m, const void* Y, const void* w) noexcept nogil:
    """m rows of targets Y (weights w, or NULL) read in place, denom m."""
    cdef Batch batch
    batch.m = m
    batch.denom = m
    batch.Y = Y
    batch.w = w
    batch.rows = NULL
    return batch


cdef bint panel_network(int L, const int* sizes, int m, bint first_t,
                        int itemsize) noexcept nogil:
    """Whether every product of a training step at batch m that OpenBLAS would thread
    (more than BPFAST_PANEL_MIN multiply-adds) fits panel_gemm.inc's kernel: forward
    Z = A W^T (W stored n^l x n^(l-1), or transposed for the first layer with
    ``first_t``), dA = dZ W and the weight update; see bpfast_panel_scope."""
    cdef int l, n_in, n_out
    cdef bint tr
    for l in range(L):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        tr = first_t and l == 0
        if not panel_product(not tr, m, n_out, n_in, itemsize):  # forward
            return False
        if l > 0 and not panel_product(False, m, n_in, n_out, itemsize):  # dA
            return False
        if not panel_product(False, n_in if tr else n_out, n_out if tr else n_in, m,
                             itemsize):  # update, of W or of its transposed copy
            return False
    return True


cdef inline bint panel_product(bint trans_b, int m, int n, int k,
                               int itemsize) noexcept nogil:
    """A product that OpenBLAS keeps on one thread, or one the panel kernel fits."""
    return (<long long>m * n * k <= BPFAST_PANEL_MIN
            or bpfast_panel_fits(trans_b, m, n, k, itemsize))


cdef void transpose(int rows, int cols, const floating* src,
                    floating* dst) noexcept nogil:
    """dst (cols x rows) = src^T (src rows x cols), in 32 x 32 tiles."""
    cdef int i0, j0, i, j, i1, j1
    for i0 in range(0, rows, 32):
        i1 = i0 + 32 if i0 + 32 < rows else rows
        for j0 in range(0, cols, 32):
            j1 = j0 + 32 if j0 + 32 < cols else cols
            for i in range(i0, i1):
                for j in range(j0, j1):
                    dst[<Py_ssize_t>j * rows + i] = src[<Py_ssize_t>i * cols + j]


cdef inline void transpose_pair(bint into, int rows, int cols, floating* a,
                                floating* a_t) noexcept nogil:
    """a_t = a^T (``into``) or a = a_t^T; a is rows x cols."""
    if into:
        transpose(rows, cols, a, a_t)
    else:
        transpose(cols, rows, a_t, a)


cdef void transpose_layer0(bint into, int n1, int n0, floating** W, floating** W_t,
                           floating** s1, floating** s1_t, floating** s2,
                           floating** s2_t) noexcept nogil:
    """transpose_pair for entry 0 of the weights and of each optimizer state present."""
    transpose_pair(into, n1, n0, W[0], W_t[0])
    if s1_t != NULL:
        transpose_pair(into, n1, n0, s1[0], s1_t[0])
    if s2_t != NULL:
        transpose_pair(into, n1, n0, s2[0], s2_t[0])


# The trainer's buffers start on a cache line. The panel kernel's threads split products
# by columns, and NumPy aligns to 16 bytes only: a line holding the end of one thread's
# columns and the start of the other's then bounced between their caches on every row.
cdef Py_ssize_t CACHE_LINE = 64


def aligned_empty(shape, dtype, bint zero=False):
    """A new C-contiguous array of ``shape`` and ``dtype`` whose data starts on a
    CACHE_LINE boundary; zeros with ``zero``, else uninitialised."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + CACHE_LINE, np.uint8)
    start = (-raw.ctypes.data) % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


cdef void* transposed_copy(list keep, list sizes, dtype) except NULL:
    """Data pointer of a new n^0 x n^1 array, kept alive in ``keep``."""
    copy = aligned_empty((sizes[0], sizes[1]), dtype)
    keep.append(copy)
    return cnp.PyArray_DATA(copy)


cdef void** with_first(void** pointers, int count, void* first) noexcept:
    """malloc'd copy of a pointer array with entry 0 replaced (NULL stays NULL)."""
    if pointers == NULL:
        return NULL
    cdef void** out = <void**>malloc(count * sizeof(void*))
    if out != NULL:
        memcpy(out, pointers, count * sizeof(void*))
        out[0] = first
    return out


cdef void** pointer_list(list arrays, str name, int typenum, object shapes,
                         bint writable) except NULL:
    """malloc'd array of data pointers to checked arrays of the given shapes."""
    cdef Py_ssize_t k, count = len(arrays)
    cdef void** out = <void**>malloc((count if count > 0 else 1) * sizeof(void*))
    if out == NULL:
        raise MemoryError()
    try:
        for k in range(count):
            shape = shapes[k]
            out[k] = checked_data(arrays[k], f"{name}[{k}]", typenum, shape[0],
                                  shape[1] if len(shape) == 2 else -1, writable)
    except BaseException:
        free(out)
        raise
    return out


cdef tuple optimizer_fields(object record):
    """An optimizer record's ``(code, velocity, nesterov)``, read by attribute (the
    registry's ``Optimizer``; the core imports nothing from the layers above it)."""
    try:
        code, velocity, nesterov = record.code, record.velocity, record.nesterov
    except AttributeError:
        raise TypeError("optimizer: expected a record with code, velocity and nesterov "
                        f"(bpfast.registry.OPTIMIZERS), got {type(record).__name__}") from None
    if code not in (OPT_SGD, OPT_ADAM):
        raise ValueError(f"optimizer: unknown optimizer code {code}")
    return int(code), bool(velocity), bool(nesterov)


cdef int read_settings(Settings* s, object step, bint single) except -1:
    """Fill the optimizer step's numbers from ``step`` (read by attribute, see
    :meth:`Trainer.epoch`), each rounded to the network's dtype."""
    try:
        s.lr = in_dtype(step.learning_rate, single)
        s.momentum = in_dtype(step.momentum, single)
        s.beta1 = in_dtype(step.beta1, single)
        s.beta2 = in_dtype(step.beta2, single)
        s.epsilon = in_dtype(step.epsilon, single)
        s.alpha = in_dtype(step.l2, single)
        s.loss_scale = in_dtype(step.loss_scale, single)
    except AttributeError as e:
        raise TypeError(f"step: expected the engine's Step (or a record with its "
                        f"fields), got {type(step).__name__}: {e}") from None
    return 0


cdef class Trainer(Layers):
    """Buffers and optimizer state for training one network with one batch size.

    Parameters
    ----------
    weights, biases : lists of writable C-contiguous arrays
        The network's own parameters, updated in place.
    codes : sequence of int
        Activation codes, one per layer (softmax only last).
    n_inputs, batch_size : int
    loss : int
        0 the seed's squared error, 1 cross-entropy (softmax output),
        2 binary cross-entropy (sigmoid output), 3 Poisson (exp output).
    optimizer_record : object
        The optimizer, read by attribute (the registry's ``Optimizer``): ``code``, 0 sgd
        or 1 adam; ``velocity``, whether sgd keeps a velocity (momentum); ``nesterov``,
        whether that velocity's step looks ahead.

    Attributes
    ----------
    state : list of ndarray
        Optimizer state (velocities, or adam's first then second moments), one array per
        parameter, weights first; empty for plain sgd.

    Notes
    -----
    When the first layer's product is small (``first_transposed``: batch_size * n^0 * n^1
    at most 2^20 multiply-adds, see :func:`set_first_transpose_limit`), during
    :meth:`epoch` its weights (and their gradient and optimizer state) live in private
    transposed copies, n^0 x n^1, copied in at the start and back at the end: the forward
    product X W^T then runs as a non-transposed GEMM, which OpenBLAS's small-matrix
    kernels take faster than the transposed form. Mid-sized first layers
    whose forward product panel_gemm.inc takes (it reads B by rows) are transposed too.
    The first layer's dA is never needed, so its transposed layout costs nothing but the
    copies.
    """
    cdef readonly int loss, optimizer, batch_size
    cdef readonly bint nesterov
    cdef readonly list state
    cdef object own
    cdef readonly list buffers
    cdef void* scratch
    cdef void* Xb
    cdef void* Yb
    cdef void* wb
    cdef void** sW1
    cdef void** sb1
    cdef void** sW2
    cdef void** sb2
    # the epoch's pointer arrays: the same as W, dW, sW1, sW2 but for entry 0, which is
    # the transposed copy below
    cdef void** tW
    cdef void** tdW
    cdef void** tsW1
    cdef void** tsW2
    # the overflow guard: per-layer magnitude bounds (GUARD_SLOTS per layer, see
    # update_is_safe); plain SGD's bias backups (its weights' backups are the dW
    # buffers, which plain SGD never uses); momentum's and Adam's backup of every
    # parameter, allocated at the first batch that needs it (usually never)
    cdef double* bound
    cdef void** bbak
    cdef void* backup
    # batch_size row pointers: the batch's rows of X where they sit (see train_epoch)
    cdef void** rows
    cdef readonly bint overflowed
    # batches the overflow guard could not prove safe (copied, stepped, checked): a
    # diagnostic, 0 in ordinary fits
    cdef readonly long long careful_steps
    cdef readonly bint first_transposed
    # whether the epoch runs in a panel scope (see panel_network)
    cdef readonly bint panel
    # bytes of the trainer's own buffers (activations, gradients, optimizer state,
    # copies), the parameters not counted
    cdef readonly Py_ssize_t nbytes

    def __cinit__(self):
        self.sW1 = self.sb1 = self.sW2 = self.sb2 = NULL
        self.tW = self.tdW = self.tsW1 = self.tsW2 = NULL
        self.bound = NULL
        self.bbak = NULL
        self.backup = NULL
        self.rows = NULL

    def __init__(self, list weights, list biases, codes, int n_inputs, int batch_size,
                 int loss, optimizer_record):
        if loss not in (LOSS_MSE, LOSS_CE, LOSS_BCE, LOSS_POISSON):
            raise ValueError(f"loss: unknown loss code {loss}")
        cdef int optimizer
        cdef bint momentum_state, nesterov
        optimizer, momentum_state, nesterov = optimizer_fields(optimizer_record)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        dtype = np.asarray(weights[0]).dtype
        sizes = [n_inputs] + [np.shape(w)[0] for w in weights]
        Z = [aligned_empty((batch_size, k), dtype) for k in sizes[1:]]
        A = [aligned_empty((batch_size, k), dtype) for k in sizes[1:]]
        dW = [aligned_empty(np.shape(w), dtype) for w in weights]
        db = [aligned_empty(np.shape(v), dtype) for v in biases]
        Layers.__init__(self, weights, biases, codes, n_inputs, batch_size, Z, A, dW, db)
        self.ready = False  # until the trainer's own buffers below are in place
        cdef Py_ssize_t l
        for l in range(self.L):
            if not weights[l].flags.writeable or not biases[l].flags.writeable:
                raise ValueError(f"weights[{l}] and biases[{l}]: training needs writable arrays")
        self.loss = loss
        self.optimizer = optimizer
        self.nesterov = nesterov
        self.batch_size = batch_size
        widest = max(sizes[1:self.L], default=1)
        scratch = aligned_empty(batch_size * widest, dtype)
        Xb = aligned_empty((batch_size, sizes[0]), dtype)
        Yb = aligned_empty((batch_size, sizes[self.L]), dtype)
        wb = aligned_empty(batch_size, dtype)
        self.own = (scratch, Xb, Yb, wb)
        self.scratch = cnp.PyArray_DATA(scratch)
        self.Xb = cnp.PyArray_DATA(Xb)
        self.Yb = cnp.PyArray_DATA(Yb)
        self.wb = cnp.PyArray_DATA(wb)
        wshapes = [np.shape(w) for w in weights]
        bshapes = [np.shape(v) for v in biases]
        self.state = []
        if optimizer == OPT_ADAM or momentum_state:
            first = [aligned_empty(s, dtype, True) for s in wshapes + bshapes]
            self.state += first
            self.sW1 = pointer_list(first[:self.L], "state", self.typenum, wshapes, True)
            self.sb1 = pointer_list(first[self.L:], "state", self.typenum, bshapes, True)
        if optimizer == OPT_ADAM:
            second = [aligned_empty(s, dtype, True) for s in wshapes + bshapes]
            self.state += second
            self.sW2 = pointer_list(second[:self.L], "state", self.typenum, wshapes, True)
            self.sb2 = pointer_list(second[self.L:], "state", self.typenum, bshapes, True)
        # transposed first-layer copies, for small first layers and those whose forward
        # product the panel kernel takes (see the class notes); plain sgd (fused update)
        # never writes dW in epoch
        self.first_transposed = bpfast_first_transpose_limit > 0 and (
            <long long>batch_size * sizes[0] * sizes[1] <= bpfast_first_transpose_limit
            # or the panel kernel takes the forward product, which it reads untransposed
            or bpfast_panel_fits(False, batch_size, sizes[1], sizes[0], dtype.itemsize))
        self.panel = panel_network(self.L, self.sizes, batch_size, self.first_transposed,
                                   dtype.itemsize)
        cdef void* w0 = self.W[0]
        cdef void* dw0 = self.dW[0]
        cdef void* s10 = self.sW1[0] if self.sW1 != NULL else NULL
        cdef void* s20 = self.sW2[0] if self.sW2 != NULL else NULL
        if self.first_transposed:  # private n^0 x n^1 copies of what entry 0 holds
            copies = []
            w0 = transposed_copy(copies, sizes, dtype)
            if optimizer == OPT_ADAM or momentum_state:
                dw0 = transposed_copy(copies, sizes, dtype)
            if s10 != NULL:
                s10 = transposed_copy(copies, sizes, dtype)
            if s20 != NULL:
                s20 = transposed_copy(copies, sizes, dtype)
            self.own += (copies,)
        self.tW = with_first(self.W, self.L, w0)
        self.tdW = with_first(self.dW, self.L, dw0)
        self.tsW1 = with_first(self.sW1, self.L, s10)
        self.tsW2 = with_first(self.sW2, self.L, s20)
        if (self.tW == NULL or self.tdW == NULL or (self.sW1 != NULL and self.tsW1 == NULL)
                or (self.sW2 != NULL and self.tsW2 == NULL)):
            raise MemoryError()
        bias_backup = [aligned_empty(s, dtype) for s in bshapes]
        self.own += (bias_backup,)
        self.bbak = pointer_list(bias_backup, "bias backup", self.typenum, bshapes, True)
        # the guard's bounds, GUARD_SLOTS per layer: see update_is_safe
        self.bound = <double*>malloc(GUARD_SLOTS * self.L * sizeof(double))
        self.rows = <void**>malloc(batch_size * sizeof(void*))
        if self.bound == NULL or self.rows == NULL:
            raise MemoryError()
        # every array the trainer allocated (each starts on a cache line)
        self.buffers = (Z + A + dW + db + self.state + [scratch, Xb, Yb, wb] + bias_backup
                        + (copies if self.first_transposed else []))
        self.nbytes = sum(a.nbytes for a in self.buffers)
        self.ready = True

    def reusable(self, list weights, list biases, codes, int n_inputs, int batch_size,
                 int loss, optimizer_record):
        """Whether this trainer, after :meth:`reset`, is what ``Trainer(weights, biases,
        codes, n_inputs, batch_size, loss, optimizer_record)`` would build: the very same
        parameter arrays, still writable, C-contiguous, of their shapes and with their
        data where it was (``resize(..., refcheck=False)`` can move it), and the same
        activations, batch size, loss and optimizer."""
        cdef Py_ssize_t l
        cdef int optimizer
        cdef bint momentum_state, nesterov
        optimizer, momentum_state, nesterov = optimizer_fields(optimizer_record)
        if (not self.ready or loss != self.loss or optimizer != self.optimizer
                or nesterov != self.nesterov
                or batch_size != self.batch_size or n_inputs != self.sizes[0]
                or (self.sW1 != NULL) != (optimizer == OPT_ADAM or momentum_state)
                or len(weights) != self.L or len(biases) != self.L
                or len(codes) != self.L):
            return False
        kept_w, kept_b = self.keep[0], self.keep[1]
        for l in range(self.L):
            w, v = weights[l], biases[l]
            if (w is not kept_w[l] or v is not kept_b[l] or codes[l] != self.codes[l]
                    or not cnp.PyArray_ISWRITEABLE(w) or not cnp.PyArray_ISWRITEABLE(v)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(w)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(v)
                    or w.shape != (self.sizes[l + 1], self.sizes[l])
                    or v.shape != (self.sizes[l + 1],)
                    or cnp.PyArray_DATA(w) != self.W[l] or cnp.PyArray_DATA(v) != self.b[l]):
                return False
        return True

    def reset(self):
        """Back to the state of a new trainer: optimizer state zero, no overflow seen."""
        self.check_ready()
        for s in self.state:
            s.fill(0)
        self.overflowed = False
        self.careful_steps = 0

    def __dealloc__(self):
        free(self.sW1)
        free(self.sb1)
        free(self.sW2)
        free(self.sb2)
        free(self.tW)
        free(self.tdW)
        free(self.tsW1)
        free(self.tsW2)
        free(self.bbak)
        free(self.bound)
        free(self.rows)
        free(self.backup)

    def epoch(self, X, Y, sample_weight, order, step, long long t=0, options=None):
        """Run one epoch over (X, Y) in batches; returns (loss_sum, t, bad_batch).

        ``order`` (an intp array holding a permutation of the rows, or None for data
        order) decides the batches. ``step`` holds the optimizer step's settings, read by
        attribute (the engine's ``Step``): ``learning_rate``, ``momentum``, ``beta1``,
        ``beta2``, ``epsilon``, ``l2`` (the L2 term's alpha) and ``loss_scale``. ``t``:
        the optimizer steps taken before (Adam's bias correction). ``loss_sum`` adds each
        batch's loss times its rows. ``bad_batch`` is -1, or the index of the batch whose
        loss was not finite: training stopped there before updating.

        ``options`` (None for the defaults, all off), read by attribute (the engine's
        ``EpochOptions``):

        ``guard``: also stop at a batch whose update would leave a parameter (or an
        optimizer state entry) that is not finite, with the parameters from before that
        batch, and set :attr:`overflowed`. The parameters are then finite after every
        epoch without any copy of them, except in the rare batches whose magnitudes come
        near overflow (then one copy, allocated at the first need, for momentum and Adam).
        ``data_bound``: the guard's (max |X|, max |Y|, largest sample weight or 1) when
        the caller knows them (a fit takes them once for all its epochs, with
        :func:`data_bounds`); None to have them computed here.

        ``skip_weightless``: pass over a batch whose sample weights are all zero (no
        step, ``t`` unchanged) instead of stopping there with its loss 0/0.

        In the main thread, signals are handled between batches, about every 50 ms:
        when a handler raises (Ctrl-C: KeyboardInterrupt), the epoch stops at that
        batch boundary, the parameters and optimizer state those of the last batch
        done, and the exception is raised from here.
        """
        self.check_ready()
        self.overflowed = False
        cdef bint guard = False, skip_weightless = False
        data_bound = None
        if options is not None:
            try:
                guard = options.guard
                data_bound = options.data_bound
                skip_weightless = options.skip_weightless
            except AttributeError as e:
                raise TypeError(f"options: expected the engine's EpochOptions, or None; "
                                f"got {type(options).__name__}: {e}") from None
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a non-empty 2-D array")
        cdef void* x = checked_data(X, "X", self.typenum, n, self.sizes[0], False)
        cdef Epoch data
        data.n = n
        data.Y = checked_data(Y, "Y", self.typenum, n, self.sizes[self.L], False)
        data.w = NULL
        data.order = NULL
        if sample_weight is not None:
            data.w = checked_data(sample_weight, "sample_weight", self.typenum, n, -1,
                                  False)
        if order is not None:
            data.order = <Py_ssize_t*>checked_data(order, "order", cnp.NPY_INTP, n, -1,
                                                   False)
            check_permutation(data.order, n)
        data.batch_size = self.batch_size
        data.t = t
        data.Xb = self.Xb
        data.Yb = self.Yb
        data.wb = self.wb
        data.rows = <const void**>self.rows
        data.skip_weightless = skip_weightless
        data.interruptible = threading.current_thread() is threading.main_thread()
        cdef Settings settings
        settings.loss = self.loss
        settings.optimizer = self.optimizer
        settings.nesterov = self.nesterov
        read_settings(&settings, step, self.typenum == cnp.NPY_FLOAT)
        cdef double bounds[3]
        cdef Guard checks
        memset(&checks, 0, sizeof(Guard))
        checks.bound = self.bound if guard else NULL
        checks.data_bound = bounds
        checks.Wbak = self.tdW  # plain SGD never uses its dW buffers otherwise
        checks.bbak = self.bbak
        checks.backup = &self.backup
        if guard:
            bounds[0], bounds[1], bounds[2] = (data_bounds(X, Y, sample_weight)
                                               if data_bound is None else data_bound)
        cdef Net net = self.training_network()
        cdef EpochResult res
        with nogil:
            self.transpose_first(True)
            bpfast_set_panel_scope(self.panel)
            if self.typenum == cnp.NPY_DOUBLE:
                if guard:
                    guard_bounds[double](&net, checks.bound, <double**>net.W)
                res = train_epoch[double](&net, <double*>x, &data, &settings, &checks)
            else:
                if guard:
                    guard_bounds[float](&net, checks.bound, <float**>net.W)
                res = train_epoch[float](&net, <float*>x, &data, &settings, &checks)
            bpfast_set_panel_scope(0)
            self.transpose_first(False)
        if res.interrupted:
            raise_pending()
        self.overflowed = res.overflow != 0
        self.careful_steps += res.careful
        return res.loss_sum, res.steps, res.bad_batch

    cdef Net training_network(self) noexcept:
        """The epoch's buffers: the first layer's transposed copies where it keeps them,
        and the optimizer state."""
        cdef Net net = self.network(self.scratch)
        net.first_t = self.first_transposed
        net.W = self.tW
        net.dW = self.tdW
        net.sW1 = self.tsW1
        net.sb1 = self.sb1
        net.sW2 = self.tsW2
        net.sb2 = self.sb2
        return net

    cdef void transpose_first(self, bint into) noexcept nogil:
        """Copy the first layer's weights and optimizer state into the transposed copies
        (``into``) or back to the caller's arrays."""
        if not self.first_transposed:
            return
        if self.typenum == cnp.NPY_DOUBLE:
            transpose_layer0[double](into, self.sizes[1], self.sizes[0],
                                     <double**>self.W, <double**>self.tW,
                                     <double**>self.sW1, <double**>self.tsW1,
                                     <double**>self.sW2, <double**>self.tsW2)
        else:
            transpose_layer0[float](into, self.sizes[1], self.sizes[0],
                                    <float**>self.W, <float**>self.tW,
                                    <float**>self.sW1, <float**>self.tsW1,
                                    <float**>self.sW2, <float**>self.tsW2)

    @property
    def gradients(self):
        """(dW, db): the buffers the last batch's gradient was written to (not copies)."""
        weights, biases, Z, A, dW, db = self.keep
        return dW, db

    def gradient(self, X, Y, sample_weight=None, double alpha=0, double loss_scale=1):
        """Full-batch loss and gradient on all rows of (X, Y), without any update.

        X must have at most ``batch_size`` rows. Returns the loss; the gradient is left in
        :attr:`gradients`. The loss is the data term times ``loss_scale`` plus
        ``alpha / (2 s) sum ||W||^2``, s the number of rows or the sum of the weights.
        """
        self.check_ready()
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1 or n > self.m:
            raise ValueError(f"X: expected 1 to {self.m} rows (the trainer's batch size)")
        cdef void* x = checked_data(X, "X", self.typenum, n, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, n, self.sizes[self.L], False)
        cdef void* w = NULL
        cdef double s = n, value
        cdef int L = self.L, m = <int>n, loss = self.loss
        if sample_weight is not None:
            w = checked_data(sample_weight, "sample_weight", self.typenum, n, -1, False)
            s = float(np.sum(sample_weight, dtype=np.float64))
            if not s > 0:
                raise ValueError("sample_weight: expected a positive sum")
        cdef Net net = self.network(self.scratch)
        cdef Batch batch = whole_batch(m, y, w)
        batch.denom = in_dtype(s, self.typenum == cnp.NPY_FLOAT)
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                value = batch_gradient[double](&net, <double*>x, &batch, loss, loss_scale,
                                               alpha)
            else:
                value = batch_gradient[float](&net, <float*>x, &batch, loss,
                                              <float>loss_scale, <float>alpha)
        return value


def backprop_block_rows(sizes, Py_ssize_t rows, int itemsize):
    """Rows per block for a full-batch backprop (or forward pass) of ``rows`` rows taken
    in blocks (:meth:`Layers.backprop_blocks`, :meth:`Layers.forward_blocks`), or 0 to
    take them all at once.

    A full-batch backprop of many rows gives OpenBLAS products of tall operands, packed
    again for every product, well below its GEMM rate. In blocks, every product is one the panel kernel takes (as in a training
    epoch at that batch size) and each block's activations stay in cache. The largest
    multiple of 8 from 32 to 256 for which every product of a block either fits the panel
    kernel or stays on one thread in OpenBLAS (:func:`panel_network`, first layer
    transposed), with the first layer's product large enough for the panel's threads,
    and at least two blocks; 0 where there is none, or no panel kernel."""
    cdef int L = len(sizes) - 1, B, l
    cdef int* cs
    if L < 1 or not panel_available():
        return 0
    cs = <int*>malloc((L + 1) * sizeof(int))
    if cs == NULL:
        raise MemoryError()
    try:
        for l in range(L + 1):
            cs[l] = int(sizes[l])
        for B in range(256, 31, -8):
            if 2 * <Py_ssize_t>B > rows:
                continue
            if <long long>B * cs[0] * cs[1] <= BPFAST_PANEL_MIN:
                break
            if (bpfast_panel_fits(False, B, cs[1], cs[0], itemsize)
                    and bpfast_panel_fits(False, cs[0], cs[1], B, itemsize)
                    and panel_network(L, cs, B, True, itemsize)):
                return B
        return 0
    finally:
        free(cs)


# Trainers keep the first layer transposed while batch_size * n^0 * n^1 is at most this
# many multiply-adds: about where OpenBLAS stops taking products with its small-matrix
# kernels. Above it both layouts go the same packed way (measured on 784-128-10 at batch
# 64 and 784-1024-1024-10 at 256: within a few percent either way, run to run), and the
# transposed copies would only cost memory (6.1 MiB for the latter in float64).
cdef long long bpfast_first_transpose_limit = 1LL << 20
