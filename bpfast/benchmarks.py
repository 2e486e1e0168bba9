"""The speed comparison: bpfast against the NumPy reference and other libraries, side by side.

Run it as ``bpfast bench`` or ``python bench/compare.py`` (options: ``--quick``,
``--plot speed.png``, ``--json out.json``, ``--threads N``). Each case is timed for every
implementation in the same process, one after the other, on the same random data and from
the same initial parameters:

- **training epochs** (the ``fit`` contract): one epoch of plain mini-batch SGD in data order
  (``optimizer="sgd", shuffle=False``), each step ``W -= lr * dW`` with ``dW`` the gradient of
  ``E = 1/(2m) sum (A^L - Y)^2`` over that batch's own ``m``;
- **forward**: inference only; **backprop**: one full-batch gradient.

Peers (each only if importable; none is a dependency of bpfast):

- ``reference``: :func:`bpfast.reference.fit` / ``forward`` / ``backprop`` (always);
- ``torch``: PyTorch eager, ``torch.nn.Linear`` layers and ``torch.optim.SGD``, loss
  ``0.5 * ((out - y)**2).sum() / m`` per batch;
- ``jax``: one ``jax.jit`` over a ``jax.lax.scan`` of the epoch's batches (x64 enabled);
- ``sklearn``: ``MLPRegressor(solver="sgd", momentum=0, alpha=0, shuffle=False)`` through
  ``partial_fit`` (one epoch). It has an identity output layer and one activation for all
  hidden layers, so it does the same amount of work but not the same function;
- the machine's GEMM rate: a 2048x2048 @ 2048x2048 product through NumPy in the same dtype.

Work: the forward pass costs ``2 m sum_l n^l n^(l-1)`` flops, the backward pass
``2 m sum_l n^l n^(l-1)`` for the dW plus ``2 m sum_(l>=2) n^l n^(l-1)`` for the dA (no
``dA^0``); elementwise work and the parameter updates are not counted. Times are medians over
repeats, after one warm-up run that is not counted (it also compiles JAX's functions); the
table shows the fastest and slowest repeat against the median, the JSON every repeat and
the quartiles. ``--threads N`` holds every implementation to N threads: the BLAS and
OpenMP pools through threadpoolctl (bpfast's own pool follows OpenBLAS's count), PyTorch
through ``torch.set_num_threads``, JAX through its XLA flags (read when it is first
imported) and, with fewer threads than usable CPUs, the whole process pinned to N CPUs.
The GEMM rate is measured under the same limit as the cases, so a case's fraction of it
compares like with like, and it never exceeds 1 (see ``run_comparison``).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CONFIGS", "Case", "PEERS", "default_cases", "forward_flops", "backward_flops",
    "case_flops", "run_comparison", "format_table", "plot_speedups", "machine_info",
    "add_arguments", "main",
]

#: name -> (layer sizes, activations (one per layer), rows, batch size)
CONFIGS = {
    "S1": ((64, 32, 10), ("sigmoid", "sigmoid"), 1797, 1),
    "S32": ((64, 32, 10), ("sigmoid", "sigmoid"), 1797, 32),
    "M": ((784, 128, 10), ("tanh", "sigmoid"), 10000, 64),
    "L": ((784, 1024, 1024, 10), ("relu", "relu", "sigmoid"), 8192, 256),
}
#: The extra cases: (task, config whose network and rows they use).
EXTRA = (("forward", "L"), ("backprop", "M"))
DTYPES = ("float64", "float32")
LEARNING_RATE = 0.01
#: ``--quick`` caps the rows of these (large) networks' cases at QUICK_ROWS.
QUICK_CAPPED = ("M", "L")
QUICK_ROWS = 1024
GEMM_N = 2048
#: Peers in table order; "bpfast" is what the others are divided by.
PEERS = ("reference", "torch", "jax", "sklearn")


@dataclass(frozen=True)
class Case:
    """One timed problem: a task on a network, data size and dtype."""

    name: str  # a key of CONFIGS (the network), or a toy name in tests
    task: str  # "epoch", "forward" or "backprop"
    sizes: tuple
    activations: tuple
    rows: int
    batch: int  # batch size of an epoch; rows for forward/backprop
    dtype: str

    @property
    def label(self):
        return self.name if self.task == "epoch" else f"{self.name} {self.task}"

    @property
    def flops(self):
        return case_flops(self)

    def describe(self):
        layers = "-".join(str(n) for n in self.sizes)
        acts = "/".join(self.activations)
        what = {"epoch": f"batch {self.batch}, one SGD epoch",
                "forward": "forward pass only", "backprop": "one full-batch backprop"}
        return f"{layers} {acts}, {self.rows:,} rows, {what[self.task]}"


def forward_flops(sizes: Sequence[int], m: int) -> int:
    """``2 m sum_l n^l n^(l-1)``: the GEMMs of a forward pass over ``m`` samples."""
    return 2 * m * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def backward_flops(sizes: Sequence[int], m: int) -> int:
    """The GEMMs of back-propagation: ``dW`` for every layer, ``dA`` for layers 2..L."""
    prods = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * m * sum(prods) + 2 * m * sum(prods[1:])


def case_flops(case: "Case") -> int:
    """Flops of one run of ``case`` (an epoch's batches add up to all ``rows``)."""
    f = forward_flops(case.sizes, case.rows)
    return f if case.task == "forward" else f + backward_flops(case.sizes, case.rows)


def default_cases(quick: bool = False, names: Sequence[str] | None = None,
                  dtypes: Sequence[str] = DTYPES) -> list["Case"]:
    """The comparison's cases; ``quick`` caps the rows of the large ones at QUICK_ROWS."""
    cases = []
    wanted = None if names is None else set(names)
    for dtype in dtypes:
        for name, (sizes, acts, rows, batch) in CONFIGS.items():
            if wanted is None or name in wanted:
                r = min(rows, QUICK_ROWS) if quick and name in QUICK_CAPPED else rows
                cases.append(Case(name, "epoch", sizes, acts, r, batch, dtype))
        for task, name in EXTRA:
            if wanted is None or task in wanted or f"{name} {task}" in wanted:
                sizes, acts, rows, _ = CONFIGS[name]
                r = min(rows, QUICK_ROWS) if quick and name in QUICK_CAPPED else rows
                cases.append(Case(name, task, sizes, acts, r, r, dtype))
    return cases


# --------------------------------------------------------------------------------------
# Implementations: each prepares a Runner for a case, from the same data and parameters
# --------------------------------------------------------------------------------------

class Runner:
    """``run()`` does the timed work; ``reset()`` (untimed) restores the initial state;
    ``result()`` returns arrays to compare with bpfast's: the parameters after an epoch,
    the outputs of a forward pass, or the gradients of a backprop."""

    def __init__(self, run, reset=None, result=None):
        self.run = run
        self.reset = reset or (lambda: None)
        self.result = result or (lambda: None)


def _bpfast_runner(case, W0, b0, X, Y, lr):
    import bpfast

    if case.task == "forward":
        out = {}
        return Runner(lambda: out.__setitem__("A", bpfast.forward(W0, b0, case.activations, X)),
                      result=lambda: [out["A"]])
    if case.task == "backprop":
        out = {}

        def run():
            out["g"] = bpfast.backprop(W0, b0, case.activations, X, Y)

        return Runner(run, result=lambda: list(out["g"][1]) + list(out["g"][2]))
    net = bpfast.Network(case.sizes, activations=case.activations, dtype=case.dtype)

    def reset():
        for p, p0 in zip(net.weights + net.biases, W0 + b0):
            p[...] = p0

    def run():
        net.fit(X, Y, epochs=1, batch_size=case.batch, learning_rate=lr, optimizer="sgd",
                shuffle=False)

    return Runner(run, reset, lambda: [p.copy() for p in net.weights + net.biases])


def _reference_runner(case, W0, b0, X, Y, lr):
    from bpfast import reference

    out = {}
    if case.task == "forward":
        def run():
            out["r"] = [reference.forward(W0, b0, case.activations, X)]
    elif case.task == "backprop":
        def run():
            _, dW, db = reference.backprop(W0, b0, case.activations, X, Y)
            out["r"] = dW + db
    else:
        def run():
            W, b, _ = reference.fit(W0, b0, case.activations, X, Y, epochs=1,
                                    batch_size=case.batch, learning_rate=lr)
            out["r"] = W + b
    return Runner(run, result=lambda: out["r"])


def _torch_runner(case, W0, b0, X, Y, lr):
    import torch

    tdt = torch.float64 if case.dtype == "float64" else torch.float32
    acts = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
            "identity": torch.nn.Identity}
    if any(a not in acts for a in case.activations):
        return None
    linears, layers = [], []
    for W, act in zip(W0, case.activations):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=tdt)
        linears.append(lin)
        layers += [lin, acts[act]()]
    model = torch.nn.Sequential(*layers)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def reset():
        with torch.no_grad():
            for lin, W, b in zip(linears, W0, b0):
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
                lin.weight.grad = lin.bias.grad = None

    def params():
        return [l.weight.detach().numpy().copy() for l in linears] + \
               [l.bias.detach().numpy().copy() for l in linears]

    out = {}
    if case.task == "forward":
        def run():
            with torch.no_grad():
                out["r"] = [model(Xt).numpy()]
        return Runner(run, reset, lambda: out["r"])
    if case.task == "backprop":
        def run():
            for p in model.parameters():
                p.grad = None
            loss = 0.5 * ((model(Xt) - Yt) ** 2).sum() / Xt.shape[0]
            loss.backward()

        def grads():
            return [l.weight.grad.numpy().copy() for l in linears] + \
                   [l.bias.grad.numpy().copy() for l in linears]
        return Runner(run, reset, grads)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    m, b = X.shape[0], case.batch

    def run():
        for s in range(0, m, b):
            xb, yb = Xt[s:s + b], Yt[s:s + b]
            loss = 0.5 * ((model(xb) - yb) ** 2).sum() / xb.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return Runner(run, reset, params)


def _jax_runner(case, W0, b0, X, Y, lr):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    acts = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
            "identity": lambda z: z}
    if any(a not in acts for a in case.activations):
        return None
    gs = [acts[a] for a in case.activations]

    def forward(params, x):
        a = x
        for (W, b), g in zip(params, gs):
            a = g(a @ W.T + b)
        return a

    def E(params, x, y):
        return 0.5 * jnp.sum((forward(params, x) - y) ** 2) / x.shape[0]

    params0 = tuple((jnp.asarray(W), jnp.asarray(b)) for W, b in zip(W0, b0))
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    out = {}

    def flat(params):
        return [np.asarray(W) for W, _ in params] + [np.asarray(b) for _, b in params]

    if case.task == "forward":
        f = jax.jit(forward)

        def run():
            out["r"] = jax.block_until_ready(f(params0, Xj))
        return Runner(run, result=lambda: [np.asarray(out["r"])])
    if case.task == "backprop":
        f = jax.jit(jax.value_and_grad(E))

        def run():
            out["r"] = jax.block_until_ready(f(params0, Xj, Yj))
        return Runner(run, result=lambda: flat(out["r"][1]))

    m, b = X.shape[0], case.batch
    nb, full = m // b, (m // b) * b

    def step(params, xy):
        e, g = jax.value_and_grad(E)(params, *xy)
        return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g), e

    def epoch(params, X, Y):
        if nb:
            Xs = X[:full].reshape(nb, b, X.shape[1])
            Ys = Y[:full].reshape(nb, b, Y.shape[1])
            params, _ = jax.lax.scan(step, params, (Xs, Ys))
        if full < m:
            params, _ = step(params, (X[full:], Y[full:]))
        return params

    f = jax.jit(epoch)

    def run():
        out["r"] = jax.block_until_ready(f(params0, Xj, Yj))
    return Runner(run, result=lambda: flat(out["r"]))


def _sklearn_runner(case, W0, b0, X, Y, lr):
    from sklearn.neural_network import MLPRegressor

    names = {"sigmoid": "logistic", "tanh": "tanh", "relu": "relu", "identity": "identity"}
    hidden = set(case.activations[:-1])
    if case.task == "backprop" or len(hidden) != 1 or hidden - set(names):
        return None  # no public full-batch gradient; one activation for all hidden layers
    est = MLPRegressor(
        hidden_layer_sizes=case.sizes[1:-1], activation=names[hidden.pop()], solver="sgd",
        learning_rate="constant", learning_rate_init=lr, momentum=0.0,
        nesterovs_momentum=False, alpha=0.0, batch_size=case.batch, shuffle=False,
        max_iter=1, random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(X[:case.batch], Y[:case.batch])  # allocates the layers

    def reset():
        for c, i, W, b in zip(est.coefs_, est.intercepts_, W0, b0):
            c[...] = W.T
            i[...] = b

    if case.task == "forward":
        return Runner(lambda: est.predict(X), reset)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.partial_fit(X, Y)

    return Runner(run, reset)


RUNNERS = {
    "bpfast": _bpfast_runner,
    "reference": _reference_runner,
    "torch": _torch_runner,
    "jax": _jax_runner,
    "sklearn": _sklearn_runner,
}


def peer_status(peers=PEERS):
    """``{peer: {"available": bool, "version" or "reason": str}}`` (imports each peer)."""
    status = {}
    for peer in peers:
        try:
            if peer == "reference":
                import bpfast
                version = f"NumPy {np.__version__} (bpfast {bpfast.__version__})"
            elif peer == "torch":
                import torch
                version = torch.__version__
            elif peer == "jax":
                import jax
                import jaxlib
                version = f"{jax.__version__} (jaxlib {jaxlib.__version__})"
            elif peer == "sklearn":
                import sklearn
                version = sklearn.__version__
            else:
                raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
        except ImportError as err:
            status[peer] = {"available": False, "reason": f"not installed ({err.name or err})"}
        else:
            status[peer] = {"available": True, "version": version}
    return status


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------

#: (budget in seconds per implementation and case, fewest repeats, most repeats)
POLICY = {"full": (2.0, 3, 21), "quick": (0.25, 1, 5)}


#: Seconds of rest before each implementation's block of runs (see time_runners).
SETTLE = {"full": 0.2, "quick": 0.1}


class Timing(NamedTuple):
    """One implementation's block of runs on one case (see time_runners)."""

    median: float
    times: list
    warmup: float
    result: Any
    threads: int | None  # the BLAS threads threadpoolctl reported inside the block


def spread(times: Sequence[float]) -> dict[str, float]:
    """Median, extremes and quartiles of the repeats: how far one run strays from the next."""
    q1, q3 = (float(q) for q in np.percentile(times, [25, 75]))
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "q1": q1, "q3": q3}


def blas_threads() -> int | None:
    """The thread count threadpoolctl reports now for the loaded BLAS libraries (the
    largest), or None without threadpoolctl or a BLAS it knows."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


class blas_limit:
    """Every BLAS and OpenMP pool threadpoolctl finds (NumPy's and SciPy's OpenBLAS, so
    also bpfast's own pool, which follows OpenBLAS's count) held to ``n`` threads inside
    the block; ``n`` None leaves them as they are."""

    def __init__(self, n: int | None):
        self.n, self.ctx = n, None

    def __enter__(self):
        if self.n is not None:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                return self
            self.ctx = threadpool_limits(limits=self.n)
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
        return False


def time_runners(runners, budget, min_repeats, max_repeats, settle=0.2, threads=None):
    """Time several runners on one case, one block each: ``{name: Timing}``.

    Each block rests ``settle`` seconds, warms the runner up once (not counted) and then
    repeats it ``budget / warm-up time`` times, within ``[min_repeats, max_repeats]``;
    ``reset`` (untimed) comes before every run and ``result`` is what the warm-up produced.
    With ``threads``, the whole block runs under ``blas_limit(threads)``, and the count
    threadpoolctl reports there is kept with the times.

    Blocks, not interleaved rounds: the libraries keep their own thread pools (bpfast
    calls SciPy's OpenBLAS, the reference and scikit-learn NumPy's, PyTorch and JAX their
    own), and a pool's idle workers keep spinning for a while after each call, so a run
    right after another library's would pay for that library's pool.
    """
    out = {}
    for name, r in runners.items():
        time.sleep(settle)
        with blas_limit(threads):
            seen = blas_threads()
            r.reset()
            t0 = time.perf_counter()
            r.run()
            warmup = time.perf_counter() - t0
            result = r.result()
            n = int(min(max_repeats, max(min_repeats, budget // max(warmup, 1e-9))))
            times = []
            for _ in range(n):
                r.reset()
                t0 = time.perf_counter()
                r.run()
                times.append(time.perf_counter() - t0)
        out[name] = Timing(statistics.median(times), times, warmup, result, seen)
    return out


def gemm_rate(dtype, repeats=3, threads=None):
    """GFLOP/s of a GEMM_N-square matrix product through NumPy (median of ``repeats``),
    under ``blas_limit(threads)``: the same limit as the cases it is compared with."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((GEMM_N, GEMM_N)).astype(dtype)
    B = rng.standard_normal((GEMM_N, GEMM_N)).astype(dtype)
    with blas_limit(threads):
        seen = blas_threads()
        A @ B  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            A @ B
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"seconds": seconds, "gflops": 2 * GEMM_N**3 / seconds / 1e9, "n": GEMM_N,
            "threads": seen}


def _relative_difference(got, want):
    if got is None or want is None:
        return None
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return float("inf")
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        diff = float(np.max(np.abs(g - w))) if w.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _case_data(case):
    import bpfast

    rng = np.random.default_rng(0)
    X = rng.standard_normal((case.rows, case.sizes[0])).astype(case.dtype)
    Y = rng.uniform(0.0, 1.0, (case.rows, case.sizes[-1])).astype(case.dtype)
    net = bpfast.Network(case.sizes, activations=case.activations, dtype=case.dtype, seed=0)
    return [W.copy() for W in net.weights], [b.copy() for b in net.biases], X, Y


def run_comparison(cases: Sequence["Case"] | None = None, peers: Sequence[str] = PEERS,
                   quick: bool = False, learning_rate: float = LEARNING_RATE,
                   log: Callable[[str], object] | None = None, policy: Any = None,
                   gemm: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Time every case for bpfast and each available peer; returns the report (a dict).

    ``log`` (a callable taking a string) hears one line per finished case. ``policy``
    overrides ``POLICY`` with ``(budget, min_repeats, max_repeats)``; ``gemm=False`` skips
    the GEMM-rate measurement (tests). ``threads`` holds the BLAS and OpenMP pools, and
    so the GEMM rate and every case alike, to that many threads (``blas_limit``).

    The GEMM rate is measured before the first case of each dtype and after every case,
    and the best sample is the one reported, so a neighbour's burst that slows one sample
    does not lift the fractions. A case's fraction is of the larger of that rate and its
    own, so it never exceeds 1; ``above_gemm`` marks a case that ran faster than every
    GEMM sample (a kernel faster than the BLAS's, or a rate taken on a busy machine).
    """
    import bpfast

    if cases is None:
        cases = default_cases(quick)
    budget, lo, hi = policy or POLICY["quick" if quick else "full"]
    settle = SETTLE["quick" if quick else "full"] if policy is None else 0.0
    status = peer_status(peers)
    active = [p for p in peers if status[p]["available"]]
    report = {
        "bpfast": bpfast.__version__,
        "machine": machine_info(),
        "versions": versions(),
        "quick": bool(quick),
        "learning_rate": learning_rate,
        "policy": {"budget_seconds": budget, "min_repeats": lo, "max_repeats": hi,
                   "settle_seconds": settle},
        "threads_limit": threads,
        "peers": status,
        "gemm": {},
        "results": [],
    }
    gemm_samples: dict[str, Any] = {}

    def measure_gemm(dtype):
        if gemm:
            gemm_samples.setdefault(dtype, []).append(gemm_rate(dtype, 3, threads))
            samples = gemm_samples[dtype]
            best = dict(max(samples, key=lambda g: g["gflops"]))
            best["samples"] = [g["gflops"] for g in samples]
            best["spread"] = spread(best["samples"])
            report["gemm"][dtype] = best

    for case in cases:
        if case.dtype not in gemm_samples:
            measure_gemm(case.dtype)
        W0, b0, X, Y = _case_data(case)
        entry = {
            "case": case.name, "task": case.task, "label": case.label,
            "sizes": list(case.sizes), "activations": list(case.activations),
            "rows": case.rows, "batch": case.batch, "dtype": case.dtype,
            "flops": case.flops, "times": {}, "ratios": {}, "agreement": {},
            "unsupported": [],
        }
        runners = {}
        for impl in ("bpfast",) + tuple(active):
            runner = RUNNERS[impl](case, W0, b0, X, Y, learning_rate)
            if runner is None:
                entry["unsupported"].append(impl)
            else:
                runners[impl] = runner
        results = {}
        for impl, t in time_runners(runners, budget, lo, hi, settle, threads).items():
            entry["times"][impl] = dict(spread(t.times), repeats=t.times, warmup=t.warmup,
                                        threads=t.threads)
            results[impl] = t.result
        del runners
        base = entry["times"]["bpfast"]["median"]
        for impl in active:
            if impl in entry["times"]:
                entry["ratios"][impl] = entry["times"][impl]["median"] / base
                entry["agreement"][impl] = _relative_difference(results[impl], results["bpfast"])
        entry["gflops"] = case.flops / base / 1e9
        report["results"].append(entry)
        if log is not None:
            log(_log_line(entry))
        measure_gemm(case.dtype)
    for entry in report["results"]:
        g = report["gemm"].get(entry["dtype"])
        entry["above_gemm"] = bool(g) and entry["gflops"] > g["gflops"]
        entry["fraction_of_gemm"] = (entry["gflops"] / max(g["gflops"], entry["gflops"])
                                     if g else None)
    return report


def _log_line(entry):
    parts = [f"{entry['label']} {entry['dtype']}: bpfast {_ms(entry['times']['bpfast']['median'])}"]
    for impl, r in entry["ratios"].items():
        parts.append(f"{impl} {r:.3g}x")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------
# The machine and the libraries
# --------------------------------------------------------------------------------------

def cpu_name():
    """The processor's model name (``/proc/cpuinfo``, else ``platform``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def machine_info() -> dict[str, Any]:
    """Processor, core count, and the thread pools of the BLAS libraries in use."""
    import bpfast

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "pools": [],
            "cpu_features": bpfast.cpu_features()}
    try:
        import threadpoolctl
    except ImportError:
        info["threads"] = os.cpu_count()
        info["threads_source"] = "os.cpu_count (threadpoolctl not installed)"
        return info
    pools = threadpoolctl.threadpool_info()
    for pool in pools:
        info["pools"].append({k: pool.get(k) for k in (
            "user_api", "internal_api", "version", "num_threads", "prefix", "filepath",
            "architecture")})
    info["bpfast_blas"] = bpfast.blas_info()
    blas = [p["num_threads"] for p in pools if p.get("user_api") == "blas"]
    info["threads"] = max(blas) if blas else os.cpu_count()
    info["threads_source"] = "threadpoolctl (BLAS)" if blas else "os.cpu_count"
    return info


def versions():
    """Versions of Python and of the libraries in the comparison that are installed
    (from their package metadata: nothing is imported)."""
    from importlib import metadata

    import bpfast

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("scipy", "torch", "jax", "jaxlib", "scikit-learn", "threadpoolctl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["bpfast"] = bpfast.__version__
    return out


def _importable(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------------------
# Output: the table, the plot, the JSON
# --------------------------------------------------------------------------------------

def _ms(seconds):
    if seconds is None:
        return "-"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def _ratio(r):
    if r is None:
        return "-"
    return f"{r:.0f}x" if r >= 100 else f"{r:.3g}x"


def header_lines(report):
    """The lines that say what ran where: processor, threads, library versions, GEMM rate."""
    m, v = report["machine"], report["versions"]
    blas = sorted({_pool_name(p) for p in m.get("pools", []) if p.get("user_api") == "blas"})
    lib = ", ".join(f"{k} {v[k]}" for k in ("numpy", "scipy", "torch", "jax", "scikit-learn")
                    if k in v)
    lines = [
        f"bpfast {report['bpfast']} speed comparison"
        + (f" (--quick: large cases capped at {QUICK_ROWS:,} rows)"
           if report.get("quick") else ""),
        f"processor: {m['cpu']}, {m['cores']} cores; threads: "
        + (f"{m['threads_requested']} (--threads"
           + (f"; process pinned to CPU(s) {m['cpus_pinned']}" if m.get("cpus_pinned")
              else "") + ")"
           if m.get("threads_requested") else f"{m['threads']}")
        + (f"; BLAS: {', '.join(blas)}" if blas else ""),
        f"libraries: {lib}",
    ]
    if m.get("bpfast_blas"):
        lines.append(f"bpfast's BLAS: {m['bpfast_blas']['backend']} "
                     f"({os.path.basename(m['bpfast_blas']['library'])})")
    if "cpu_features" in m:
        lines.append("bpfast's CPU features: " + (", ".join(m["cpu_features"]) or "none"))
    if report.get("gemm"):
        rates = ", ".join(
            f"{dt} {g['gflops']:.1f} GFLOP/s" for dt, g in report["gemm"].items())
        lines.append(f"GEMM {GEMM_N}x{GEMM_N} @ {GEMM_N}x{GEMM_N} through NumPy: {rates} "
                     f"(best of {_gemm_count(report)} samples, under the cases' thread limit: "
                     f"{_gemm_threads(report)})")
    return lines


def _gemm_count(report):
    return max((len(g.get("samples", [1])) for g in report["gemm"].values()), default=0)


def _gemm_threads(report):
    seen = sorted({g["threads"] for g in report["gemm"].values() if g.get("threads")})
    return "BLAS threads " + ", ".join(map(str, seen)) if seen else "the BLAS's default"


def _range(times):
    """``-3%/+8%``: the fastest and slowest repeat against the median."""
    med = times.get("median")
    if not med or "min" not in times:
        return "-"
    return f"-{100 * (med - times['min']) / med:.0f}%/+{100 * (times['max'] - med) / med:.0f}%"


def _pool_name(pool):
    """``numpy: openblas 0.3.31`` from a threadpoolctl record (owner from its file path)."""
    path = (pool.get("filepath") or "").replace("\\", "/")
    owner = ""
    for part in reversed(path.split("/")[:-1]):
        if part.endswith(".libs"):
            owner = part[:-5].replace("_", "-") + ": "
            break
        if part in ("lib", "bin"):
            continue
        owner = part + ": "
        break
    return f"{owner}{pool.get('internal_api') or 'blas'} {pool.get('version') or ''}".strip()


def format_table(report: dict[str, Any]) -> str:
    """The report as readable text: header lines, the case legend, the table, notes."""
    peers = [p for p in PEERS if p in report["peers"]]
    avail = [p for p in peers if report["peers"][p]["available"]]
    lines = header_lines(report)
    lines.append("")
    lines.append("cases:")
    seen = {}
    for e in report["results"]:
        key = e["label"]
        if key not in seen:
            seen[key] = Case(e["case"], e["task"], tuple(e["sizes"]), tuple(e["activations"]),
                             e["rows"], e["batch"], e["dtype"]).describe()
    width = max((len(k) for k in seen), default=4)
    for key, text in seen.items():
        lines.append(f"  {key:<{width}}  {text}")
    lines.append("")
    lines.append(
        f"bpfast: median time per run, its fastest and slowest repeat against the median; "
        f"GFLOP/s and its fraction of the GEMM rate. "
        f"Peers: their time / bpfast's (above 1: bpfast is faster). lr {report['learning_rate']}."
    )
    cols = ["case", "dtype", "bpfast", "range", "GFLOP/s", "of GEMM"] + [
        p + ("*" if p == "sklearn" else "") for p in peers]
    rows = []
    for e in report["results"]:
        frac = e.get("fraction_of_gemm")
        row = [e["label"], e["dtype"], _ms(e["times"]["bpfast"]["median"]),
               _range(e["times"]["bpfast"]), f"{e['gflops']:.1f}",
               "-" if frac is None else f"{100 * frac:.0f}%" + ("^" if e.get("above_gemm")
                                                                 else "")]
        for p in peers:
            if not report["peers"][p]["available"]:
                row.append("n/i")
            elif p in e["unsupported"]:
                row.append("n/a")
            else:
                row.append(_ratio(e["ratios"].get(p)))
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    left = {0, 1}

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines.append(fmt(cols))
    lines.append(fmt(["-" * w for w in widths]))
    lines.extend(fmt(r) for r in rows)
    lines.append("")
    # agreement: the worst relative difference per peer and dtype
    agree = []
    for dtype in DTYPES:
        parts = []
        for p in avail:
            vals = [e["agreement"].get(p) for e in report["results"]
                    if e["dtype"] == dtype and p in e["agreement"]]
            vals = [v for v in vals if v is not None]
            if vals:
                parts.append(f"{p} {max(vals):.1e}")
        if parts:
            agree.append(f"{dtype}: " + ", ".join(parts))
    if agree:
        lines.append("same results as bpfast (largest relative difference of the parameters "
                     "after an epoch, outputs, gradients): " + "; ".join(agree))
    if any(e.get("above_gemm") for e in report["results"]):
        lines.append("^ faster than every GEMM sample: its fraction is of its own rate (a "
                     "kernel faster than NumPy's BLAS, or GEMM samples slowed by a busy "
                     "machine)")
    missing = [f"{p} ({report['peers'][p]['reason']})" for p in peers
               if not report["peers"][p]["available"]]
    if missing:
        lines.append("n/i: not installed: " + ", ".join(missing))
    if "sklearn" in peers:
        lines.append("* sklearn's MLPRegressor has an identity output layer and no public "
                     "gradient: same work, not the same function (n/a: not comparable)")
    return "\n".join(lines)


def plot_speedups(report: dict[str, Any], path: str) -> None:
    """A bar chart of each peer's time over bpfast's, per case, written to ``path`` (PNG)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plot_speedups needs matplotlib: install the extra with "
                          f"`pip install 'bpfast[plot]'` ({err})") from err

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in PEERS if report["peers"].get(p, {}).get("available")]
    labels = [f"{e['label']}\n{e['dtype']}" for e in report["results"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.8))
    width = 0.8 / max(len(peers), 1)
    x = np.arange(len(labels))
    for k, peer in enumerate(peers):
        vals = [e["ratios"].get(peer, np.nan) for e in report["results"]]
        bars = ax.bar(x + (k - (len(peers) - 1) / 2) * width, vals, width, label=peer)
        for rect, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.2g}",
                            (rect.get_x() + rect.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("peer time / bpfast time (above 1: bpfast faster)")
    head = header_lines(report)
    ax.set_title(head[0] + "\n" + "\n".join(h for h in head[1:3]), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)


def _atomic(path, write, binary=False):
    from .io import atomic_write

    return atomic_write(path, write, binary=binary)


def write_json(report, path):
    _atomic(path, lambda f: json.dump(report, f, indent=1))


# --------------------------------------------------------------------------------------
# Command line (``bpfast bench`` and ``bench/compare.py``)
# --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer repeats, and at most {QUICK_ROWS:,} rows in the large "
                             "cases (well under a minute)")
    parser.add_argument("--plot", metavar="PNG", help="write a speed-up bar chart (matplotlib)")
    parser.add_argument("--json", metavar="FILE", help="write every number to a JSON file")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="limit the BLAS/OpenMP threads (threadpoolctl), torch's and "
                             "JAX's to N")
    parser.add_argument("--peers", default=",".join(PEERS), metavar="LIST",
                        help=f"peers to compare with, comma-separated (default: {','.join(PEERS)}; "
                             "those not installed are skipped)")
    parser.add_argument("--cases", metavar="LIST",
                        help="only these cases, e.g. S1,S32,M,L,forward,backprop (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), metavar="LIST",
                        help="float64,float32 (default: both)")
    return parser


class UsageError(ValueError):
    """A bad option value (the command line reports it and exits with status 2)."""


def run_from_args(args, out=None, err=None):
    """Run the comparison as ``args`` say; print the table; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    for p in peers:
        if p not in PEERS:
            raise UsageError(f"--peers: unknown peer {p!r}; choose from {', '.join(PEERS)}")
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    for d in dtypes:
        if d not in DTYPES:
            raise UsageError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    names = None
    if args.cases:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
        known = set(CONFIGS) | {t for t, _ in EXTRA}
        for n in names:
            if n not in known:
                raise UsageError(f"--cases: unknown case {n!r}; choose from "
                                 f"{', '.join(list(CONFIGS) + [t for t, _ in EXTRA])}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: expected a positive number, got {args.threads}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingExtra("--plot needs matplotlib: pip install 'bpfast[plot]'") from None
    cases = default_cases(args.quick, names, dtypes)
    if not cases:
        raise UsageError("no cases selected")

    def log(line):
        print(line, file=err, flush=True)

    with _thread_limit(args.threads, log) as limit:
        report = run_comparison(cases, peers=peers, quick=args.quick, log=log,
                                threads=args.threads)
    if args.threads is not None:
        report["machine"]["threads_requested"] = args.threads
        report["machine"]["cpus_pinned"] = limit.cpus
    print(format_table(report), file=out)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        plot_speedups(report, args.plot)
        print(f"wrote {args.plot}", file=out)
    return 0


class MissingExtra(RuntimeError):
    """An optional dependency an option needs is not installed."""


class _thread_limit:
    """``threadpool_limits(N)`` plus torch's and JAX's thread counts, when N is given."""

    def __init__(self, n, log):
        self.n, self.log, self.ctx, self.torch_before = n, log, None, None
        self.cpus_before = self.cpus = None

    def __enter__(self):
        if self.n is None:
            return self
        # Thread-count settings do not reach every pool (XLA's CPU runtime ignores some of
        # its flags); pinning the process to n CPUs does, for every thread started from
        # here on.
        if hasattr(os, "sched_setaffinity"):
            allowed = sorted(os.sched_getaffinity(0))
            if self.n < len(allowed):
                self.cpus_before, self.cpus = set(allowed), allowed[:self.n]
                os.sched_setaffinity(0, self.cpus)
                self.log(f"pinned to CPU(s) {self.cpus}")
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            self.log("threadpoolctl is not installed: BLAS threads left as they are "
                     "(set OPENBLAS_NUM_THREADS before starting instead)")
        else:
            self.ctx = threadpool_limits(limits=self.n)
            self.ctx.__enter__()
        if "jax" not in sys.modules:  # XLA reads its flags once, at import
            flags = os.environ.get("XLA_FLAGS", "")
            if self.n == 1:
                flags += " --xla_cpu_multi_thread_eigen=false"
            os.environ["XLA_FLAGS"] = flags.strip()
        elif self.cpus is None:
            self.log("JAX was imported before the limit: its thread pool is held only by "
                     "CPU pinning, which needs fewer threads than usable CPUs")
        if _importable("torch"):
            import torch
            self.torch_before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.cpus_before is not None:
            os.sched_setaffinity(0, self.cpus_before)
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
        if self.torch_before is not None:
            import torch
            torch.set_num_threads(self.torch_before)
        return False


def build_parser(prog="compare.py"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time one SGD epoch (and a forward pass and a backprop) of bpfast against "
                    "the NumPy reference and the peers that are installed (PyTorch, JAX, "
                    "scikit-learn), and against the machine's GEMM rate.",
    )
    return add_arguments(parser)


def main(argv: Sequence[str] | None = None, prog: str = "compare.py") -> int:
    """``python bench/compare.py [--quick] [--plot speed.png] [--json out.json]``."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (UsageError, MissingExtra) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
