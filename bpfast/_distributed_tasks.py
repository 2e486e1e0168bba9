"""The worker side of :mod:`bpfast.distributed`: what runs next to each chunk of data.

Nothing here imports dask; these functions are shipped to (or called by) Dask workers and
only need bpfast and NumPy there. Every task returns *unnormalised partial sums* over its
rows as a tuple ``(rows, loss_sum, arrays, steps)``, all sums in float64; :func:`add`
combines two of them, so any tree of ``add`` calls gives the total, which the client
divides by the total number of rows once.
"""
import numpy as np

from . import engine
from ._core import kernels as _kernels
from .training import LOSSES, OPTIMIZERS, DivergenceError

__all__ = ["Payload", "make_block", "chunk_gradient", "local_round", "identity", "add"]


class Payload:
    """What travels from the client to every worker once per step or round.

    One opaque object, so that ``Client.scatter`` sends it as a single piece of data
    (a list or tuple would be scattered item by item).

    Attributes
    ----------
    weights, biases : lists of C-contiguous ndarray
        The network's parameters, in its dtype. Never modified by a task.
    codes : ndarray of intc
        Activation codes, one per layer.
    state : list of ndarray
        Optimizer state for local SGD (velocities, or Adam's first then second moments,
        weights first), empty otherwise.
    steps : int
        Optimizer steps taken so far (Adam's ``t``).
    config : dict
        Local SGD settings (empty otherwise).
    """

    def __init__(self, weights, biases, codes, state=(), steps=0, config=None):
        self.weights = list(weights)
        self.biases = list(biases)
        self.codes = np.asarray(codes, dtype=np.intc)
        self.state = list(state)
        self.steps = int(steps)
        self.config = dict(config or {})

    def __setstate__(self, state):
        # arrays unpickled from a network message can sit at unaligned offsets of its
        # frames; the kernels need aligned, C-contiguous buffers: fix once per worker
        self.__dict__.update(state)
        self.weights = [_aligned(w) for w in self.weights]
        self.biases = [_aligned(b) for b in self.biases]
        self.state = [_aligned(s) for s in self.state]

    @property
    def nbytes(self):
        """Bytes of the arrays carried (what each worker receives, pickling aside)."""
        return int(sum(a.nbytes for a in self.weights + self.biases + self.state)
                   + self.codes.nbytes)


def _aligned(a, dtype=None):
    """``a`` itself when it is a C-contiguous, aligned array of ``dtype``, else a copy."""
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def _first_bad(a, name, start):
    bad = np.argwhere(~np.isfinite(a))[0]
    raise ValueError(
        f"{name}: expected finite values, got {a[tuple(bad)]} at "
        f"[{start + int(bad[0])}, {int(bad[1])}]"
    )


def make_block(X, Y, dtype, start):
    """One chunk's ``(X, Y)`` as C-contiguous arrays of ``dtype``, checked finite once.

    ``start`` is the chunk's first row in the whole array, for error messages. Arrays that
    are already right are kept, not copied.
    """
    X = _aligned(X, dtype)
    Y = _aligned(Y, dtype)
    if not np.isfinite(X).all():
        _first_bad(X, "X", start)
    if not np.isfinite(Y).all():
        _first_bad(Y, "Y", start)
    return X, Y


def chunk_gradient(payload, block):
    """The seed's squared error and its gradient summed over one chunk's rows.

    Runs bpfast's compiled back-propagation (the kernel behind :func:`bpfast.backprop`)
    on the chunk, which gives ``E_k = sum (A - Y)^2 / (2 m_k)`` and the gradient of
    ``E_k``; the partial sums are ``2 m_k E_k`` and ``m_k`` times the gradient, in
    float64. The block was checked by :func:`make_block`.
    """
    X, Y = (_aligned(a) for a in block)  # a block moved between workers may be unaligned
    m = X.shape[0]
    weights, biases = payload.weights, payload.biases
    sizes = [X.shape[1]] + [w.shape[0] for w in weights]
    Z, A, scratch = engine._workspace(sizes, m, X.dtype)
    dW = [np.empty_like(w) for w in weights]
    db = [np.empty_like(b) for b in biases]
    layers = _kernels.Layers(list(weights), list(biases), payload.codes, sizes[0], m,
                             Z, A, dW, db)
    E = layers.backprop(X, Y, scratch)
    sums = [np.multiply(g, m, dtype=np.float64) for g in dW + db]
    return (m, 2.0 * m * float(E), sums, 0)


def identity(payload):
    """The payload itself: a task that holds it in a worker's memory."""
    return payload


def add(*parts):
    """Sum of partial results, left to right (new arrays: inputs are never modified)."""
    rows, loss, arrays, steps = parts[0]
    arrays = [a.copy() for a in arrays]
    for r, part_loss, more, s in parts[1:]:
        rows, loss, steps = rows + r, loss + part_loss, steps + s
        for a, b in zip(arrays, more):
            a += b
    return (rows, loss, arrays, steps)


def local_round(payload, seed, *blocks):
    """One round of local SGD on a private copy of the network, over ``blocks``.

    The compiled epoch loop (``_kernels.Trainer.epoch``, what :meth:`bpfast.Network.fit`
    runs) goes ``local_epochs`` times over the blocks, the blocks in a fresh random order
    and the rows of each in a fresh random order every epoch when ``shuffle`` is set
    (batches never straddle two blocks). The optimizer state starts from the payload's.

    Returns ``(rows, loss_sum, arrays, steps x rows)`` with ``arrays`` the final weights,
    biases and optimizer state each times ``rows`` (float64), and ``loss_sum`` the last
    epoch's sum over batches of batch loss x batch rows.
    """
    cfg = payload.config
    weights = [w.copy() for w in payload.weights]
    biases = [b.copy() for b in payload.biases]
    loss_code, _ = LOSSES[cfg["loss"]]
    opt_code, velocity, nesterov = OPTIMIZERS[cfg["optimizer"]]
    rows = [blk[0].shape[0] for blk in blocks]
    n = sum(rows)
    trainer = _kernels.Trainer(weights, biases, payload.codes, weights[0].shape[1],
                               min(cfg["batch_size"], max(rows)), loss_code, opt_code,
                               velocity)
    for mine, given in zip(trainer.state, payload.state):
        mine[...] = given
    rng = np.random.default_rng(seed)
    t = payload.steps
    loss_sum = 0.0
    for epoch in range(cfg["local_epochs"]):
        order = rng.permutation(len(blocks)) if cfg["shuffle"] else range(len(blocks))
        loss_sum = 0.0
        for k in order:
            X, Y = (_aligned(a) for a in blocks[k])
            perm = rng.permutation(X.shape[0]).astype(np.intp) if cfg["shuffle"] else None
            part, t, bad = trainer.epoch(
                X, Y, None, perm, cfg["learning_rate"], cfg["momentum"], nesterov,
                cfg["beta1"], cfg["beta2"], cfg["epsilon"], cfg["l2"], 1.0, t,
            )
            if bad >= 0:
                raise DivergenceError(
                    f"local SGD: the loss became NaN or infinite in round {cfg['round'] + 1}, "
                    f"local epoch {epoch + 1} (batch {bad + 1} of a chunk); the network "
                    f"keeps its parameters from the end of round {cfg['round']}. Try a "
                    f"smaller learning_rate (now {cfg['learning_rate']})."
                )
            loss_sum += part
    params = weights + biases
    if not all(np.isfinite(p).all() for p in params):
        raise DivergenceError(
            f"local SGD: a parameter update overflowed in round {cfg['round'] + 1}; the "
            f"network keeps its parameters from the end of round {cfg['round']}. Try a "
            f"smaller learning_rate (now {cfg['learning_rate']})."
        )
    sums = [np.multiply(p, n, dtype=np.float64) for p in params + list(trainer.state)]
    return (n, loss_sum, sums, t * n)
