"""Data-parallel back-propagation and training on a Dask cluster.

The error ``E = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2`` and its gradient are sums
over samples (see docs/math.md), so they split across rows: each chunk of a Dask array
chunked by rows gives its partial sums, computed by bpfast's compiled kernel on the worker
that holds the chunk; a fixed pairwise tree adds them up; the client divides by the total
``m`` once. Only parameters travel (once per step, to each worker); the data stay where
they are.

- :func:`backprop` -- ``(E, dW, db)`` of the whole Dask array, equal to
  :func:`bpfast.backprop` on the same rows gathered on one machine.
- :func:`fit` -- full-batch gradient descent (``method="gd"``) and L-BFGS
  (``method="lbfgs"``), one distributed back-propagation per step, equal step by step
  to the single-machine run; and local SGD (``method="local_sgd"``): every worker runs
  bpfast's compiled epoch loop over its own chunks, then the parameters are averaged,
  weighted by rows -- one exchange per round.

Works with any ``distributed.Client`` (the current one by default) and, with no client
at all, with dask's default scheduler in this process. A worker that dies is survived:
its chunks are recomputed from their graph, and the result is the same to the last bit
(the reduction tree is fixed by chunk order, not by which worker finishes first). Needs
the ``dask`` extra: ``pip install 'bpfast[dask]'``; ``import bpfast`` alone never imports
dask.

>>> import dask.array as da
>>> from distributed import Client, LocalCluster
>>> import bpfast, bpfast.distributed
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
>>> X = da.random.default_rng(0).normal(size=(10_000, 64), chunks=(2_500, -1))
>>> Y = da.random.default_rng(1).uniform(size=(10_000, 10), chunks=(2_500, -1))
>>> net = bpfast.Network([64, 32, 10], activations="sigmoid", seed=0)
>>> E, dW, db = bpfast.distributed.backprop(net.weights, net.biases, net.activations, X, Y)
>>> history = bpfast.distributed.fit(net, X, Y, method="lbfgs", maxiter=50)
"""
from .integrations.dask import DistributedHistory, backprop, fit

__all__ = ["DistributedHistory", "backprop", "fit"]
