"""Data-parallel back-propagation and training on Dask, behind :mod:`bpfast.distributed`
(its public path, which documents it): the client side; the workers' tasks are in
:mod:`bpfast.integrations._dask_tasks`."""
import math
import numbers
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as err:  # pragma: no cover - only without the extra
    raise ImportError(
        "bpfast.distributed needs dask: install the extra with "
        f"`pip install 'bpfast[dask]'` ({err})"
    ) from err

from . import _dask_tasks as tasks
from .._typing import Activations, Gradient, Params
from .._validation import check_parameters, check_positive_int
from ..activations import canonical_names, resolve_activations
from ..network import Network
from ..registry import LOSSES, OPTIMIZERS
from ..training import (DivergenceError, History, _choice,
                       _positive_float, _unit_interval)

__all__ = ["DistributedHistory", "backprop", "fit"]

METHODS = ("gd", "lbfgs", "local_sgd")

#: How often a step is run again after a worker was lost while it ran.
_RETRIES = 5


@dataclass
class DistributedHistory(History):
    """What :func:`fit` did: one ``loss`` and ``time`` entry per step (``gd``), per
    iteration (``lbfgs``) or per round (``local_sgd``).

    Attributes (besides :class:`bpfast.History`'s)
    ----------------------------------------------
    method : str
    evaluations : int
        Distributed back-propagations (``gd``, ``lbfgs``) or rounds run.
    bytes_per_worker : int
        Bytes of parameters (and optimizer state, for local SGD) sent to each worker per
        step or round.
    chunks, workers : int
        Row chunks of the data, and the workers (or, without a distributed client, the
        local models of local SGD) they were spread over.
    result : scipy.optimize.OptimizeResult or None
        SciPy's result, for ``lbfgs``.
    """

    method: str | None = None
    evaluations: int = 0
    bytes_per_worker: int = 0
    chunks: int = 0
    workers: int = 0
    result: object = None


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _check_dask_array(a, name, n_columns, meaning, dtype):
    if not isinstance(a, da.Array):
        raise TypeError(
            f"{name}: expected a dask.array.Array chunked by rows, got {type(a).__name__}; "
            f"wrap a NumPy array with dask.array.from_array({name}, "
            "chunks=(rows_per_chunk, -1))"
        )
    if a.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array (n_samples, {n_columns}), got {a.ndim} "
            f"dimensions with shape {a.shape}"
        )
    if any(isinstance(c, float) and math.isnan(c) for c in a.chunks[0]):
        raise ValueError(
            f"{name}: the row chunk sizes are unknown (NaN); call "
            f"{name}.compute_chunk_sizes() first"
        )
    if a.shape[1] != n_columns:
        raise ValueError(
            f"{name}: expected {n_columns} columns ({meaning}), got shape {a.shape}"
        )
    if a.numblocks[1] != 1:
        raise ValueError(
            f"{name}: expected a single chunk along the columns (chunked by rows only), got "
            f"column chunks {a.chunks[1]}; rechunk with {name}.rechunk({{1: -1}})"
        )
    meta = getattr(a, "_meta", None)
    if meta is not None and not isinstance(meta, np.ndarray):
        raise TypeError(
            f"{name}: expected chunks that are NumPy arrays, got {type(meta).__name__}"
        )
    if a.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {dtype} (the parameters' dtype), got {a.dtype}; "
            f"convert with {name}.astype('{dtype}')"
        )


def _check_data(X, Y, sizes, dtype):
    """Structural checks of the Dask inputs: nothing is computed."""
    _check_dask_array(X, "X", sizes[0], "n^0 = weights[0].shape[1]", dtype)
    _check_dask_array(Y, "Y", sizes[-1], "n^L = weights[-1].shape[0]", dtype)
    if X.shape[0] == 0:
        raise ValueError(f"X: expected at least one sample (row), got shape {X.shape}")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows, one per row of X, got {Y.shape[0]}")
    if X.chunks[0] != Y.chunks[0]:
        raise ValueError(
            f"Y: expected row chunks aligned with X's {_short(X.chunks[0])}, got "
            f"{_short(Y.chunks[0])}; rechunk with Y.rechunk({{0: X.chunks[0]}})"
        )


def _short(chunks):
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) <= 6:
        return str(chunks)
    return f"({chunks[0]}, {chunks[1]}, ..., {chunks[-1]}) [{len(chunks)} chunks]"


def _resolve_client(client):
    """The ``distributed.Client`` to use, or None for dask's default scheduler."""
    if client is not None:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover
            raise TypeError("client: distributed is not installed") from None
        if not isinstance(client, Client):
            raise TypeError(
                f"client: expected a distributed.Client or None, got {type(client).__name__}"
            )
        if client.asynchronous:
            raise TypeError("client: expected a synchronous Client (asynchronous=False)")
        return client
    try:
        from distributed import Client
    except ImportError:
        return None
    try:
        return Client.current()  # as_current()'s client, else the default one
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Where the work runs: a distributed cluster, or dask's default scheduler
# ---------------------------------------------------------------------------

def _block_graph(X, Y):
    """One delayed ``(X_k, Y_k)`` per non-empty row chunk, and the row counts."""
    xs = X.to_delayed().ravel()
    ys = Y.to_delayed().ravel()
    make = dask.delayed(tasks.make_block, pure=True)
    blocks, rows, start = [], [], 0
    for x, y, r in zip(xs, ys, X.chunks[0]):
        if r > 0:
            key = f"bpfast-block-{uuid.uuid4().hex}"
            blocks.append(make(x, y, X.dtype.str, start, dask_key_name=key))
            rows.append(int(r))
        start += int(r)
    return blocks, rows


#: Partial results summed by one task of the reduction tree.
_FAN_IN = 8


def _tree(items, combine):
    """A fixed tree over ``items`` in their order, ``_FAN_IN`` consecutive items per
    node: the same tree, hence the same sums to the last bit, wherever and in whatever
    order the leaves are computed."""
    items = list(items)
    while len(items) > 1:
        groups = [items[i:i + _FAN_IN] for i in range(0, len(items), _FAN_IN)]
        items = [g[0] if len(g) == 1 else combine(*g) for g in groups]
    return items[0]


class _Cluster:
    """The chunks held in the memory of a distributed cluster's workers."""

    def __init__(self, client, X, Y):
        self.client = client
        blocks, self.rows = _block_graph(X, Y)
        # compute each (X_k, Y_k) next to its data and keep it there; the futures keep
        # the graph, so the scheduler can recompute a chunk whose worker died
        self.blocks = client.compute(blocks)
        for f in self.blocks:  # wait for all (distributed.wait needs a default client)
            if f.exception() is not None:
                f.result()  # raises the worker's error (e.g. non-finite data)
        holders = client.who_has(self.blocks)
        self.holder = [sorted(holders.get(f.key, ()) or ("",))[0] for f in self.blocks]

    @property
    def n_workers(self):
        return len(set(self.holder))

    def groups(self):
        """Chunk indices by the worker that holds them, ordered by first chunk; fixed
        for the whole run, so a worker's loss does not change the grouping."""
        by = {}
        for i, w in enumerate(self.holder):
            by.setdefault(w, []).append(i)
        return sorted(by.items(), key=lambda kv: kv[1][0])

    def _run(self, submit_all):
        from distributed.client import FutureCancelledError

        for attempt in range(_RETRIES + 1):
            try:
                return submit_all().result()
            except (OSError, FutureCancelledError):
                # a worker died while this step ran (CommClosedError is an OSError):
                # the chunks it held are recomputed, and the step, a pure function of
                # the parameters, is run again
                if attempt == _RETRIES:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _send(self, payload):
        # one task whose value is the payload: the scheduler hands it to one worker, the
        # others fetch it from there when their first task needs it -- one copy per
        # worker, and, unlike scattered data, recomputable when its holder dies
        return self.client.submit(tasks.identity, payload, pure=False)

    def gradient_sums(self, payload):
        c = self.client

        def submit_all():
            p = self._send(payload)
            leaves = [c.submit(tasks.chunk_gradient, p, b, pure=False) for b in self.blocks]
            return _tree(leaves, lambda *parts: c.submit(tasks.add, *parts, pure=False))

        return self._run(submit_all)

    def round_sums(self, payload, seeds):
        c = self.client

        def submit_all():
            p = self._send(payload)
            leaves = [
                c.submit(tasks.local_round, p, seed, *[self.blocks[i] for i in idx],
                         workers=[w] if w else None, allow_other_workers=True, pure=False)
                for (w, idx), seed in zip(self.groups(), seeds)
            ]
            return _tree(leaves, lambda *parts: c.submit(tasks.add, *parts, pure=False))

        return self._run(submit_all)

    def close(self):
        self.blocks = []  # releasing the futures frees the chunks on the workers


class _Local:
    """The chunks computed in this process, the work run by dask's default scheduler."""

    def __init__(self, X, Y):
        blocks, self.rows = _block_graph(X, Y)
        self.blocks = [dask.delayed(b, name=f"bpfast-block-{uuid.uuid4().hex}")
                       for b in dask.compute(*blocks)]

    @property
    def n_workers(self):
        return len(self.blocks)

    def groups(self):
        """Each chunk trains its own local model."""
        return [(None, [i]) for i in range(len(self.blocks))]

    def _params(self, payload):
        return dask.delayed(payload, name=f"bpfast-params-{uuid.uuid4().hex}")

    def gradient_sums(self, payload):
        p = self._params(payload)
        f = dask.delayed(tasks.chunk_gradient, pure=False)
        add = dask.delayed(tasks.add, pure=False)
        return dask.compute(_tree([f(p, b) for b in self.blocks], add))[0]

    def round_sums(self, payload, seeds):
        p = self._params(payload)
        f = dask.delayed(tasks.local_round, pure=False)
        add = dask.delayed(tasks.add, pure=False)
        leaves = [f(p, seed, *[self.blocks[i] for i in idx])
                  for (_, idx), seed in zip(self.groups(), seeds)]
        return dask.compute(_tree(leaves, add))[0]

    def close(self):
        self.blocks = []


def _backend(client, X, Y):
    return _Local(X, Y) if client is None else _Cluster(client, X, Y)


def _gradient(backend, weights, biases, activations, l2=0.0):
    """``(E, dW, db)`` over all rows, in the parameters' dtype."""
    payload = tasks.Payload(weights, biases, activations)
    m, sq, sums, _ = backend.gradient_sums(payload)
    L = len(weights)
    E = sq / (2.0 * m)
    grads = [(s / m).astype(weights[0].dtype) for s in sums]
    dW, db = grads[:L], grads[L:]
    if l2:
        E += 0.5 * l2 * sum(float(np.sum(np.square(W, dtype=np.float64))) for W in weights) / m
        dW = [g + (l2 / m) * W for g, W in zip(dW, weights)]
    return float(E), dW, db, payload.nbytes


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def backprop(weights: Params, biases: Params, activations: Activations, X: "da.Array",
             Y: "da.Array", *, client: Any = None) -> Gradient:
    """The error ``E`` and its gradient over a Dask array, data-parallel.

    Each row chunk's partial sums (squared error and the gradient of the *sum* over its
    rows) are computed by bpfast's compiled kernel on the worker that holds the chunk,
    added up by a fixed tree (up to 8 partial results per node, in chunk order) and
    divided by the total ``m`` once. The parameters travel once to each worker (one task
    holds them; the workers fetch it from each other), not once per chunk.

    Parameters
    ----------
    weights, biases, activations
        As for :func:`bpfast.backprop` (NumPy arrays, on the client).
    X : dask.array.Array of shape ``(m, n^0)``
        Chunked by rows only (one chunk along the columns), in the parameters' dtype.
    Y : dask.array.Array of shape ``(m, n^L)``
        Row chunks aligned with ``X``'s, same dtype.
    client : distributed.Client, optional
        Defaults to the current client; without one, dask's default scheduler.

    Returns
    -------
    E : float
    dW, db : lists of ndarray
        Equal to :func:`bpfast.backprop` on the gathered data, to rounding (the sums are
        taken in a different order; float64 within ~1e-14 relative).
    """
    weights, biases, sizes, dtype = check_parameters(weights, biases)
    names = resolve_activations(activations, len(weights))
    _check_data(X, Y, sizes, dtype)
    client = _resolve_client(client)
    backend = _backend(client, X, Y)
    try:
        E, dW, db, _ = _gradient(backend, weights, biases, names)
    finally:
        backend.close()
    return E, dW, db


def _real(value, name, low=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value) or (low is not None and value < low):
        raise ValueError(f"{name}: expected a finite number >= {low}, got {value}")
    return float(value)


_ONLY = {
    "epochs": ("gd",),
    "maxiter": ("lbfgs",),
    "tol": ("lbfgs",),
    "rounds": ("local_sgd",),
    "local_epochs": ("local_sgd",),
    "batch_size": ("local_sgd",),
    "optimizer": ("local_sgd",),
    "shuffle": ("local_sgd",),
    "seed": ("local_sgd",),
    "learning_rate": ("gd", "local_sgd"),
}


def fit(net: Network, X: "da.Array", Y: "da.Array", client: Any = None, *,
        method: str = "gd", epochs: int | None = None, learning_rate: float | None = None,
        maxiter: int | None = None, tol: float | None = None, rounds: int | None = None,
        local_epochs: int | None = None, batch_size: int | None = None,
        optimizer: str | None = None, loss: str | None = None, shuffle: bool | None = None,
        seed: int | None = None, momentum: float = 0.9,
        beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, l2: float = 0.0,
        callback: Callable[..., object] | None = None) -> "DistributedHistory":
    """Train ``net`` in place on Dask arrays, data-parallel.

    Parameters
    ----------
    net : bpfast.Network
    X, Y : dask.array.Array
        As for :func:`backprop`: chunked by rows only, aligned row chunks, in the
        network's dtype. The chunks are computed once, kept in the workers' memory where
        they are, and never moved; only parameters travel.
    client : distributed.Client, optional
        Defaults to the current client; without one, dask's default scheduler runs
        the chunks in this process.
    method : {"gd", "lbfgs", "local_sgd"}
        - ``"gd"``: full-batch gradient descent, ``epochs`` steps (default 10) of
          ``W -= learning_rate * dW`` (default 0.1), each one distributed back-propagation.
        - ``"lbfgs"``: ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` with
          ``maxiter`` (default 100) and ``tol`` driving the distributed back-propagation.
          The parameters are packed as ``[W^1.ravel(), b^1, W^2.ravel(), b^2, ...]``.
        - ``"local_sgd"``: ``rounds`` (default 10) rounds; in each, every worker trains a
          private copy of the network with bpfast's compiled epoch loop over the chunks it
          holds (``local_epochs``, default 1, ``batch_size`` 32, ``learning_rate`` 0.1,
          ``optimizer`` "sgd", ``loss`` "mse", ``shuffle`` True, ``seed``), then the
          parameters and the optimizer state are averaged, weighted by rows. One exchange
          per round, none per batch. The grouping of chunks follows where they are held
          when training starts (without a distributed client, each chunk is its own
          local model).
    loss : str
        ``"mse"`` (the squared error E) for ``gd`` and ``lbfgs``; any of ``Network.fit``'s losses
        for ``local_sgd``.
    momentum, beta1, beta2, epsilon
        For the ``local_sgd`` optimizers, as in :meth:`bpfast.Network.fit`.
    l2 : float, default 0
        Adds ``l2/(2m) sum ||W^l||^2`` to the loss (``m`` the whole data's rows for the
        full-batch methods, each batch's rows for local SGD, as ``Network.fit``).
    callback : callable, optional
        ``callback(net, step, history)`` after every step, iteration or round, with
        ``net`` holding the current parameters; returning False stops.

    Returns
    -------
    DistributedHistory
        ``loss`` per step: ``gd`` the loss before each update, ``lbfgs`` the loss at each
        iterate, ``local_sgd`` the row-weighted mean training loss of each round's last
        local epoch.

    Raises
    ------
    DivergenceError
        When the loss or the parameters become NaN or infinite; ``net`` keeps the last
        parameters with a finite loss (the previous round's, for local SGD).
    """
    if not isinstance(net, Network):
        raise TypeError(f"net: expected a bpfast.Network, got {type(net).__name__}")
    _choice(method, METHODS, "method")
    given = dict(epochs=epochs, maxiter=maxiter, tol=tol, rounds=rounds,
                 local_epochs=local_epochs, batch_size=batch_size, optimizer=optimizer,
                 shuffle=shuffle, seed=seed, learning_rate=learning_rate)
    for name, value in given.items():
        if value is not None and method not in _ONLY[name]:
            allowed = " or ".join(repr(m) for m in _ONLY[name])
            raise ValueError(f"{name}: applies to method={allowed} only, not {method!r}")
    if loss is None:
        loss = "mse"
    _choice(loss, tuple(LOSSES), "loss")
    if method != "local_sgd" and loss != "mse":
        raise ValueError(
            f"loss: method={method!r} minimises the squared error E, loss='mse'; "
            f"got {loss!r} (other losses train with method='local_sgd')"
        )
    l2 = _real(l2, "l2", 0.0)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    check_parameters(net.weights, net.biases)  # finite, consistent: raises otherwise
    _check_data(X, Y, net.sizes, net.dtype)
    if method == "gd":
        epochs = check_positive_int(10 if epochs is None else epochs, "epochs")
        learning_rate = _positive_float(0.1 if learning_rate is None else learning_rate,
                                        "learning_rate")
    elif method == "lbfgs":
        maxiter = check_positive_int(100 if maxiter is None else maxiter, "maxiter")
        if tol is not None:
            tol = _real(tol, "tol", 0.0)
    else:
        needs = LOSSES[loss].output
        if needs is not None and net.activations[-1] != needs:
            raise ValueError(
                f"loss: {loss!r} needs a {needs} output layer, but the network's last "
                f"activation is {net.activations[-1]!r}"
            )
        config = dict(
            local_epochs=check_positive_int(1 if local_epochs is None else local_epochs,
                                            "local_epochs"),
            batch_size=check_positive_int(32 if batch_size is None else batch_size,
                                          "batch_size"),
            learning_rate=_positive_float(0.1 if learning_rate is None else learning_rate,
                                          "learning_rate"),
            optimizer=_choice("sgd" if optimizer is None else optimizer, tuple(OPTIMIZERS),
                              "optimizer"),
            loss=loss, shuffle=bool(True if shuffle is None else shuffle),
            momentum=_unit_interval(momentum, "momentum"),
            beta1=_unit_interval(beta1, "beta1"), beta2=_unit_interval(beta2, "beta2"),
            epsilon=_positive_float(epsilon, "epsilon"), l2=l2,
        )
        rounds = check_positive_int(10 if rounds is None else rounds, "rounds")
        if seed is None:
            seed = np.random.SeedSequence().entropy
        elif (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
              or seed < 0):
            raise TypeError(f"seed: expected a non-negative integer or None, got {seed!r}")

    client = _resolve_client(client)
    backend = _backend(client, X, Y)
    history = DistributedHistory(method=method, chunks=len(backend.rows),
                                 workers=backend.n_workers)
    names = canonical_names(net.activations)
    try:
        if method == "gd":
            _fit_gd(net, backend, names, history, epochs, learning_rate, l2, callback)
        elif method == "lbfgs":
            _fit_lbfgs(net, backend, names, history, maxiter, tol, l2, callback)
        else:
            # local SGD's checks above replaced a None seed by fresh entropy
            _fit_local_sgd(net, backend, names, history, rounds, config,
                           int(seed), callback)  # type: ignore[arg-type]
    finally:
        backend.close()
    net.loss_function = loss
    return history


def _finite(E, arrays):
    return math.isfinite(E) and all(np.isfinite(a).all() for a in arrays)


def _fit_gd(net, backend, activations, history, epochs, learning_rate, l2, callback):
    params = net.weights + net.biases
    saved = None
    for step in range(epochs):
        started = time.perf_counter()
        E, dW, db, nbytes = _gradient(backend, net.weights, net.biases, activations, l2)
        history.evaluations += 1
        history.bytes_per_worker = nbytes
        if not _finite(E, dW + db):
            if saved is not None:
                for p, s in zip(params, saved):
                    p[...] = s
            raise DivergenceError(
                f"gradient descent: the loss or its gradient became NaN or infinite at step "
                f"{step + 1}; the network keeps the last parameters whose loss was finite. "
                f"Try a smaller learning_rate (now {learning_rate})."
            )
        saved = [p.copy() for p in params]
        for p, g in zip(params, dW + db):
            p -= learning_rate * g
        history.loss.append(E)
        history.time.append(time.perf_counter() - started)
        if callback is not None and callback(net, step, history) is False:
            break


def _pack(arrays):
    return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])


def _layout(net):
    """Interleaved [W^1, b^1, W^2, b^2, ...] order of the packed vector."""
    order = []
    for W, b in zip(net.weights, net.biases):
        order += [W, b]
    return order


def _unpack_into(x, arrays):
    k = 0
    for a in arrays:
        a[...] = x[k:k + a.size].reshape(a.shape)
        k += a.size


def _fit_lbfgs(net, backend, activations, history, maxiter, tol, l2, callback):
    from scipy.optimize import minimize

    shapes = [(w.shape, b.shape) for w, b in zip(net.weights, net.biases)]

    def fun(x):
        weights, biases, k = [], [], 0
        for ws, bs in shapes:
            n = ws[0] * ws[1]
            weights.append(np.ascontiguousarray(x[k:k + n].reshape(ws), dtype=net.dtype))
            k += n
            biases.append(np.ascontiguousarray(x[k:k + bs[0]], dtype=net.dtype))
            k += bs[0]
        E, dW, db, nbytes = _gradient(backend, weights, biases, activations, l2)
        history.evaluations += 1
        history.bytes_per_worker = nbytes
        grad = np.empty_like(x)
        k = 0
        for gw, gb in zip(dW, db):
            grad[k:k + gw.size] = gw.ravel()
            k += gw.size
            grad[k:k + gb.size] = gb
            k += gb.size
        return E, grad

    started = [time.perf_counter()]

    def on_iteration(intermediate_result):
        x = intermediate_result.x
        _unpack_into(x, _layout(net))
        history.loss.append(float(intermediate_result.fun))
        history.time.append(time.perf_counter() - started[0])
        started[0] = time.perf_counter()
        if callback is not None and callback(net, len(history.loss) - 1, history) is False:
            raise StopIteration

    x0 = _pack(_layout(net))
    result = minimize(fun, x0, jac=True, method="L-BFGS-B", tol=tol,
                      options={"maxiter": maxiter}, callback=on_iteration)
    if not np.isfinite(result.x).all() or not math.isfinite(result.fun):
        raise DivergenceError("L-BFGS: the loss or the parameters became NaN or infinite")
    _unpack_into(result.x, _layout(net))
    history.result = result


def _fit_local_sgd(net, backend, activations, history, rounds, config, seed, callback):
    L = net.n_layers
    params = net.weights + net.biases
    n_state = 2 if config["optimizer"] == "adam" else int(OPTIMIZERS[config["optimizer"]].velocity)
    state = [np.zeros_like(p) for _ in range(n_state) for p in params]
    steps = 0
    groups = backend.groups()
    for r in range(rounds):
        started = time.perf_counter()
        payload = tasks.Payload(net.weights, net.biases, activations, state, steps,
                                dict(config, round=r))
        seeds = [[seed, r, g] for g in range(len(groups))]
        n, loss_sum, sums, steps_sum = backend.round_sums(payload, seeds)
        averaged = [(s / n).astype(net.dtype) for s in sums]
        for p, a in zip(params, averaged[:2 * L]):
            p[...] = a
        state = averaged[2 * L:]
        steps = int(round(steps_sum / n))
        history.evaluations += 1
        history.bytes_per_worker = payload.nbytes
        history.loss.append(loss_sum / n)
        history.time.append(time.perf_counter() - started)
        if callback is not None and callback(net, r, history) is False:
            break
