"""Distributed back-propagation and local SGD on a LocalCluster, against one machine.

The M network of the speed comparison (784-128-10, tanh/sigmoid) on ``--rows`` rows
(default 100,000, float64):

- single machine: :func:`bpfast.backprop` on the NumPy arrays, BLAS limited to one
  thread (what each single-threaded worker has), and with the machine's default threads;
- distributed, with 1 and 2 worker processes (one thread each): the time of one step of
  full-batch gradient descent (one distributed back-propagation and the update, the data
  already in the workers' memory), and the time of a one-off
  ``bpfast.distributed.backprop`` call (which also builds and checks the chunks);
- parallel efficiency ``single / (workers x distributed)``, single-threaded baseline;
- the per-round overhead of local SGD: the time of a round whose local work is tiny
  (``--tiny-rows`` rows per worker, one batch each);
- bytes of parameters (and optimizer state) sent to each worker per step or round.

Medians of ``--repeats`` runs. Not part of the test suite::

    python bench/bench_distributed.py                 # about a minute on 2 cores
    python bench/bench_distributed.py --rows 20000 --repeats 3 --workers 1 2 4

On a machine with fewer cores than workers + 1 (the client and scheduler need some CPU
too) the 2-worker figures measure contention as much as scaling.

It uses the installed bpfast (``pip install '.[dask]' threadpoolctl``), which the worker
processes import too; to run it on a source tree built in place, set ``PYTHONPATH`` to
the tree.
"""
import argparse
import logging
import os
import platform
import statistics
import time

import numpy as np

import bpfast

SIZES = (784, 128, 10)
ACTS = ["tanh", "sigmoid"]


def _median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def _single(X, Y, net, repeats, threads):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        median, times = _median_time(
            lambda: bpfast.backprop(net.weights, net.biases, ACTS, X, Y), repeats)
    return median, min(times), max(times)


def _placed(client, workers, rows, chunks_per_worker, dtype, seed):
    """X, Y persisted with an equal share of the rows on each worker, made there."""
    import dask.array as da

    parts_x, parts_y = [], []
    share = [rows // len(workers) + (k < rows % len(workers)) for k in range(len(workers))]
    for k, (addr, r) in enumerate(zip(workers, share)):
        c = -(-r // chunks_per_worker)
        rng = da.random.default_rng(seed + k)
        x = rng.normal(size=(r, SIZES[0]), chunks=(c, -1)).astype(dtype)
        y = rng.uniform(size=(r, SIZES[-1]), chunks=(c, -1)).astype(dtype)
        x, y = client.persist([x, y], workers=[addr])
        parts_x.append(x)
        parts_y.append(y)
    X = da.concatenate(parts_x, axis=0)
    Y = da.concatenate(parts_y, axis=0)
    return X, Y


def run(args):
    import dask
    import distributed
    from distributed import Client, LocalCluster

    import bpfast.distributed as bd

    logging.getLogger("distributed").setLevel(logging.ERROR)
    dtype = np.dtype(args.dtype)
    net = bpfast.Network(SIZES, activations=ACTS, dtype=dtype, seed=0)
    print(f"bpfast {bpfast.__version__} distributed benchmark: M network "
          f"{'-'.join(map(str, SIZES))} {'/'.join(ACTS)}, {args.rows:,} rows, {dtype}, "
          f"{net.n_parameters:,} parameters")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"dask {dask.__version__}, distributed {distributed.__version__}, "
          f"numpy {np.__version__}; medians of {args.repeats} repeats")

    results = {}
    for n_workers in args.workers:
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, \
                Client(cluster, set_as_default=False) as client:
            workers = sorted(client.scheduler_info()["workers"])
            X, Y = _placed(client, workers, args.rows, args.chunks_per_worker, dtype, 1)
            if not results.get("numpy"):
                # the same rows on one machine, gathered once
                # (np.require: arrays unpickled from a message can be unaligned, which
                # bpfast.backprop does not fix by itself)
                Xn, Yn = client.compute([X, Y], sync=True)
                results["numpy"] = tuple(np.require(a, requirements=["C", "A"])
                                         for a in (Xn, Yn))
            step_net = bpfast.Network(SIZES, activations=ACTS, dtype=dtype, seed=0)
            history = bd.fit(step_net, X, Y, client, method="gd",
                             epochs=args.repeats + 1, learning_rate=1e-3)
            steps = history.time[1:]
            step = statistics.median(steps)
            call, _ = _median_time(
                lambda: bd.backprop(net.weights, net.biases, ACTS, X, Y, client=client),
                max(1, args.repeats // 2))
            # local SGD with tiny local work: the cost of a round itself
            Xt, Yt = _placed(client, workers, args.tiny_rows * n_workers, 1, dtype, 2)
            rounds = {}
            for opt in ("sgd", "adam"):
                h = bd.fit(bpfast.Network(SIZES, activations=ACTS, dtype=dtype, seed=0),
                           Xt, Yt, client, method="local_sgd", rounds=args.rounds + 1,
                           local_epochs=1, batch_size=args.tiny_rows, optimizer=opt,
                           learning_rate=1e-3, seed=0)
                rounds[opt] = (statistics.median(h.time[1:]), h.bytes_per_worker, h.workers)
            results[n_workers] = dict(step=step, spread=(min(steps), max(steps)),
                                      call=call, rounds=rounds,
                                      step_bytes=history.bytes_per_worker,
                                      holders=history.workers, chunks=history.chunks)

    Xn, Yn = results["numpy"]
    single1, lo1, hi1 = _single(Xn, Yn, net, args.repeats, 1)
    single_default, lo2, hi2 = _single(Xn, Yn, net, args.repeats, None)
    print()
    print(f"single machine, bpfast.backprop: {single1 * 1e3:.1f} ms ({lo1 * 1e3:.0f}-"
          f"{hi1 * 1e3:.0f}) with 1 BLAS thread, {single_default * 1e3:.1f} ms ({lo2 * 1e3:.0f}-"
          f"{hi2 * 1e3:.0f}) with the default threads")
    print()
    header = (f"{'workers':>7}  {'chunks':>6}  {'GD step':>9}  {'(min-max)':>15}  "
              f"{'efficiency':>10}  "
              f"{'backprop call':>13}  {'local SGD round (sgd / adam)':>28}")
    print(header)
    print("-" * len(header))
    for n_workers in args.workers:
        r = results[n_workers]
        eff = single1 / (n_workers * r["step"])
        rs = r["rounds"]
        lo, hi = r["spread"]
        print(f"{n_workers:>7}  {r['chunks']:>6}  {r['step'] * 1e3:7.1f}ms  "
              f"{f'({lo * 1e3:.0f}-{hi * 1e3:.0f} ms)':>15}  {eff:10.2f}  "
              f"{r['call'] * 1e3:11.1f}ms  "
              f"{rs['sgd'][0] * 1e3:12.1f}ms / {rs['adam'][0] * 1e3:6.1f}ms")
    print()
    any_r = results[args.workers[-1]]
    P = net.n_parameters
    print(f"bytes sent to each worker per step or round: gradient descent / L-BFGS "
          f"{any_r['step_bytes']:,} (the {P:,} parameters in {dtype}); local SGD "
          f"{any_r['rounds']['sgd'][1]:,} with sgd, {any_r['rounds']['adam'][1]:,} with adam "
          f"(parameters and both moment estimates)")
    print(f"bytes returned: each chunk's partial sums, {8 * P:,} (float64, whatever the "
          f"dtype), to the worker that adds them unless already there, the total "
          f"{8 * P:,} to the client; local SGD: {8 * P:,} per worker with sgd, "
          f"{3 * 8 * P:,} with adam")
    print("GD step: one distributed back-propagation and the update, data already in the "
          "workers' memory; backprop call: a one-off bpfast.distributed.backprop, which "
          "also builds and checks the chunks; efficiency: single (1 thread) / (workers x "
          "GD step)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunks-per-worker", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10,
                        help="local SGD rounds timed for the per-round overhead")
    parser.add_argument("--tiny-rows", type=int, default=32,
                        help="rows per worker in the local SGD overhead run")
    args = parser.parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
