# The passes' arguments, grouped. The structs hold buffers as void*: a fused function
# takes one operand typed (the batch's X, or the arrays it works on), which picks its
# float or double version, and casts the structs' pointers to that type. Settings are
# doubles holding values of the network's dtype (Trainer.epoch rounds them to float for a
# float32 network), so the casts back are exact and the arithmetic is that dtype's.


cdef struct Net:
    # one network's sizes, activations and buffers (rows: the batch size or block)
    int L
    const int* sizes  # n^0 .. n^L
    const int* codes  # one activation code per layer
    bint first_t      # W[0], dW[0] and their optimizer state stored transposed
    void** W
    void** b
    void** Z          # pre-activations; the backward pass writes the deltas dZ over them
    void** A
    void** dW
    void** db
    void* scratch     # one hidden layer's dA: rows x the widest hidden layer
    void** sW1        # optimizer state: momentum's V or Adam's M, and Adam's S (or NULL)
    void** sb1
    void** sW2
    void** sb2


cdef struct Batch:
    int m
    double denom        # m, or the sum of the rows' weights
    const void* Y
    const void* w       # the rows' weights, or NULL
    const void** rows   # first layer stored transposed: row p of X is rows[p] (or NULL)


cdef struct Settings:
    # a training epoch's configuration
    int loss
    int optimizer
    bint nesterov
    double loss_scale
    double lr
    double momentum
    double beta1
    double beta2
    double epsilon
    double alpha


cdef enum:
    # what backward() does with each layer's gradient (StepPolicy.kind)
    KEEP_GRADIENT = 0   # dW = beta dW + dZ^T A_prev and db, for the caller
    PLAIN_SGD = 1       # into W and b at once: W = shrink W - lr dZ^T A_prev, no dW
    OPTIMIZER_STEP = 2  # a momentum or Adam step of each layer, from tiles or row blocks


cdef struct StepPolicy:
    int kind
    double beta           # KEEP_GRADIENT: dW = beta dW + dZ^T A_prev
    void** db_total       # KEEP_GRADIENT in row blocks: db summed over blocks (or NULL)
    const Settings* settings
    double l2             # alpha / denom: the L2 term's coefficient in the gradient
    double shrink         # PLAIN_SGD: 1 - lr l2
    double lr_t           # Adam's step size at this step
    void* gbuf            # room for any gradient block (the largest layer's dW)


cdef struct Guard:
    # the overflow guard (see update_is_safe); bound NULL when it is off
    double* bound             # GUARD_SLOTS per layer
    const double* data_bound  # max |X|, max |Y|, the largest row weight (or 1)
    void** Wbak               # plain SGD's copies of the parameters
    void** bbak
    void** backup             # momentum's and Adam's flat copy, allocated at first need
    int overflow              # 1 when a step overflowed and was undone
    long long careful         # batches the guard could not prove safe


cdef struct Epoch:
    # an epoch's data, besides X, and its order
    Py_ssize_t n
    const void* Y
    const void* w
    const Py_ssize_t* order   # a permutation of the rows, or NULL for data order
    int batch_size
    long long t               # steps taken before this epoch
    void* Xb                  # a gathered batch
    void* Yb
    void* wb
    const void** rows         # room for batch_size row pointers (or NULL)
    bint skip_weightless
    bint interruptible
