"""The ``bpfast`` command line (``bpfast --help``, also ``python -m bpfast``).

Subcommands: ``check`` (a gradient three ways), ``demo`` (the embedded digits), ``train``
and ``predict`` (a user's CSV or NPZ file), ``bench`` (the speed comparison of
:mod:`bpfast.benchmarks`). Bad input (a missing or unreadable file, a malformed CSV, a
missing column, a model that does not fit the data, ...) prints one line on stderr,
``bpfast: error: ...``, and exits with status 2.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

#: Exit status for bad input and usage errors (argparse's own).
EXIT_USAGE = 2

PLOT_HINT = "pip install 'bpfast[plot]'"


class CLIError(Exception):
    """A problem with the user's input: reported on one line, exit status 2."""


# --------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------

def _check(args):
    """Compute a gradient with the compiled kernels and check it three ways."""
    import bpfast
    from bpfast import reference

    rng = np.random.default_rng(args.seed)
    try:
        sizes = [int(s) for s in args.sizes.split("-")]
    except ValueError:
        raise CLIError(f"--sizes: expected sizes like 64-32-10, got {args.sizes!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise CLIError(f"--sizes: expected two or more positive sizes like 64-32-10, "
                       f"got {args.sizes!r}")
    # the network, its gradient twice (compiled and reference), the data and every
    # layer's Z and A twice
    need = 8 * (3 * _n_parameters(sizes) + 4 * args.samples * sum(sizes))
    _require_memory(need, f"a {args.sizes} network on {args.samples:,} samples",
                    "--sizes/--samples")
    net = bpfast.Network(sizes, activations=args.activation, seed=args.seed)
    X = rng.normal(size=(args.samples, sizes[0]))
    Y = rng.uniform(size=(args.samples, sizes[-1]))
    print(f"bpfast {bpfast.__version__}: {net}, m = {args.samples}")

    t0 = time.perf_counter()
    E, dW, db = net.gradient(X, Y)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    E_ref, dW_ref, db_ref = reference.backprop(net.weights, net.biases, net.activations, X, Y)
    t_ref = time.perf_counter() - t0
    diff = max(
        float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300))
        for g, r in zip(dW + db, dW_ref + db_ref)
    )
    print(f"E = {E:.12g} (reference {E_ref:.12g})")
    print(f"compiled vs NumPy reference: largest relative difference {diff:.2e}")
    print(f"time: compiled {t_fast * 1e3:.2f} ms, reference {t_ref * 1e3:.2f} ms")

    small = bpfast.Network([sizes[0], 5, sizes[-1]], activations=args.activation, seed=1)
    fd = bpfast.check_gradient(small.weights, small.biases, small.activations, X[:20], Y[:20])
    print(f"finite differences on {small}: relative difference {fd:.2e}")
    ok = diff < 1e-8 and fd < 1e-5
    print("gradient check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------

def _need_matplotlib():
    """pyplot with the Agg backend, or a CLIError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise CLIError(f"--plot needs matplotlib: {PLOT_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _atomic_write(path, write, binary=False):
    """``bpfast.io.atomic_write``, with a one-line error for a missing directory."""
    from .io import atomic_write

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"{path}: the directory {directory} does not exist")
    return atomic_write(path, write, binary=binary, **({} if binary else {"newline": ""}))


def _check_out_dir(path):
    """Fail before any work when an output file cannot be written: its directory does
    not exist or is not writable, or the path is a directory."""
    from .io import temp_prefix

    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise CLIError(f"{path}: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory")
    try:  # the very operation a save does first, so permissions, ACLs and mounts all count
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(), suffix=".probe.tmp", dir=directory)
    except OSError as err:
        raise CLIError(f"{path}: cannot write in {directory} "
                       f"({err.strerror or type(err).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def _n_parameters(sizes):
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _fmt_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


def _require_memory(nbytes, what, option):
    """Refuse, before allocating, a size whose arrays could not fit in physical memory."""
    from bpfast.datasets import memory_size

    if nbytes > memory_size():
        raise CLIError(f"{option}: {what} would need about {_fmt_bytes(nbytes)} of memory; "
                       f"this machine has {_fmt_bytes(memory_size())}")


def _fit_scaling(X):
    """Per-column mean and standard deviation of ``X`` (a constant column gets std 1).

    Each column is first divided by its largest magnitude, so neither the sum nor the
    squares overflow for values near the float64 limit.
    """
    peak = np.abs(X).max(axis=0)
    peak[peak == 0] = 1.0
    Z = X / peak
    mean = Z.mean(axis=0) * peak
    std = Z.std(axis=0) * peak
    std[std == 0] = 1.0
    return mean, std


def _standardise(X, mean, std, names):
    """``(X - mean) / std``, or a CLIError naming the first column it overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        Z = (X - mean) / std
    bad = ~np.isfinite(Z).all(axis=0)
    if bad.any():
        j = int(np.argmax(bad))
        raise CLIError(f"input column {names[j]!r}: its values overflow when standardised "
                       f"(mean {mean[j]:.6g}, std {std[j]:.6g}); rescale the column or train "
                       "with --scale none")
    return Z


def _arch(net):
    return "-".join(map(str, net.sizes)) + " " + "/".join(net.activations)


def _plot_losses(plt, path, curves, title, ylabel="loss"):
    """Write the loss curves (label -> list of per-epoch values) to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, values in curves.items():
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)


#: Seconds between two progress lines when stderr is not a terminal (a log file, a pipe).
PROGRESS_INTERVAL = 5.0


class PlainProgress:
    """Progress for a log: one plain line at most every ``interval`` seconds, and one at
    the end, instead of a bar redrawn with carriage returns. The same methods as the
    tqdm bar that :func:`_progress` gives a terminal."""

    def __init__(self, total, desc, stream, interval=PROGRESS_INTERVAL, clock=time.monotonic):
        self.total, self.desc, self.stream = total, desc, stream
        self.interval, self.clock = interval, clock
        self.n, self.postfix = 0, {}
        self.start = self.last = clock()
        self.printed = 0

    def set_postfix(self, postfix, refresh=False):
        self.postfix = dict(postfix)

    def update(self, n=1):
        self.n += n
        if self.clock() - self.last >= self.interval:
            self._line()

    def close(self):
        if self.n > self.printed:
            self._line()

    def _line(self):
        self.last = self.clock()
        self.printed = self.n
        fields = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: epoch {self.n}/{self.total}{fields} "
              f"({self.last - self.start:.1f} s)", file=self.stream, flush=True)


class _Discard(io.TextIOBase):
    """A text stream that drops what is written to it (``--quiet``'s reports)."""

    def write(self, text):
        return len(text)


class _NoProgress:
    def set_postfix(self, postfix, refresh=False):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total, desc, quiet):
    """A tqdm bar on a terminal, plain lines in a log, nothing with ``--quiet``."""
    if quiet:
        return _NoProgress()
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, sys.stderr)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="epoch", desc=desc, file=sys.stderr, dynamic_ncols=True)


#: How `train` and `predict` name each loss: the squared-error loss bpfast minimises is
#: E = 1/(2m) sum (A - Y)^2, half the mean squared error of a single output.
LOSS_LABELS = {"mse": "half_mse", "cross_entropy": "cross_entropy"}


def _regression_metrics(A, Y):
    """R^2 (averaged over the output columns, as scikit-learn's r2_score), MAE and MSE."""
    A, Y = np.asarray(A, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    residual = ((Y - A) ** 2).sum(axis=0)
    total = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    # a constant target column scores 1 when predicted exactly, else 0 (scikit-learn's rule)
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1),
                  np.where(residual == 0, 1.0, 0.0))
    return float(r2.mean()), float(np.mean(np.abs(Y - A))), float(np.mean((Y - A) ** 2))


def _accuracy(net, X, labels):
    return float(np.mean(net.forward(X).argmax(axis=1) == labels))


def _fmt_rate(samples_per_second):
    return f"{samples_per_second:,.0f}"


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------

#: Epochs of the NumPy reference trainer the demo times at most (it is the slow one).
DEMO_REFERENCE_EPOCHS = 30


def _demo(args):
    """Train a 64-64-10 classifier on the embedded 8x8 handwritten digits, report its
    held-out accuracy, and time the same training with the NumPy reference trainer."""
    import bpfast
    from bpfast import reference
    from bpfast.datasets import load_digits

    plt = _need_matplotlib() if args.plot else None
    if args.plot:
        _check_out_dir(args.plot)
    dtype = np.dtype(args.dtype)
    X8, y = load_digits()
    X = (X8 / 16.0).astype(dtype)
    Y = np.eye(10, dtype=dtype)[y]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    n_test = int(round(0.2 * len(X)))
    test, train = order[:n_test], order[n_test:]
    Xtr, Ytr, Xte, yte = X[train], Y[train], X[test], y[test]

    net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], dtype=dtype,
                         seed=args.seed)
    W0 = [W.copy() for W in net.weights]
    b0 = [b.copy() for b in net.biases]
    settings = dict(batch_size=args.batch_size, learning_rate=args.learning_rate,
                    optimizer=args.optimizer, loss="cross_entropy")
    print(f"bpfast demo: 8x8 handwritten digits ({len(X):,} images, 10 classes), "
          f"{len(train):,} to train on, {n_test} held out (seed {args.seed})")
    print(f"{net}: {args.optimizer}, learning rate {args.learning_rate}, batch {args.batch_size}, "
          f"{args.epochs} epochs, cross-entropy, inputs scaled to [0, 1]", flush=True)

    ref_epochs = min(args.epochs, DEMO_REFERENCE_EPOCHS)
    held_loss, held_acc, at_ref = [], [], {}
    bar = _progress(args.epochs, "training", args.quiet)

    def callback(net, epoch, history):
        A = net.forward(Xte).astype(np.float64)
        p = np.clip(A[np.arange(len(yte)), yte], 1e-300, None)
        held_loss.append(float(-np.mean(np.log(p))))
        held_acc.append(float(np.mean(A.argmax(axis=1) == yte)))
        if epoch == 0 or epoch + 1 == ref_epochs:
            at_ref[epoch + 1] = [q.copy() for q in net.weights + net.biases]
        bar.set_postfix({"loss": f"{history.loss[-1]:.4f}", "accuracy": f"{held_acc[-1]:.3f}",
                         "samples/s": _fmt_rate(len(Xtr) / max(history.time[-1], 1e-9))},
                        refresh=False)
        bar.update(1)

    try:
        # shuffle off, so the reference can follow the very same steps
        history = net.fit(Xtr, Ytr, epochs=args.epochs, shuffle=False, callback=callback,
                          **settings)
    finally:
        bar.close()
    t_fast = sum(history.time)
    right = int(round(held_acc[-1] * n_test))
    print(f"held-out accuracy: {held_acc[-1]:.3f} ({right} of {n_test} digits right)")
    print(f"bpfast: {args.epochs} epochs in {t_fast:.3f} s "
          f"({_fmt_rate(args.epochs * len(Xtr) / t_fast)} samples/s)")

    print(f"NumPy reference trainer (bpfast.reference.fit), same start and settings, "
          f"{ref_epochs} epochs ...", end=" ", flush=True)
    t0 = time.perf_counter()
    Wr, br, ref_loss = reference.fit(W0, b0, net.activations, Xtr, Ytr, epochs=ref_epochs,
                                     **settings)
    t_ref = time.perf_counter() - t0
    t_same = sum(history.time[:ref_epochs])
    print(f"{t_ref:.2f} s (bpfast {t_same:.3f} s)")
    print(f"speed-up over the NumPy reference: {t_ref / t_same:.1f}x")
    # The two trainers round differently (summation order, fused multiply-adds): after
    # one epoch their weights agree to rounding, while over many steps training (Adam at
    # a large learning rate above all) can amplify those differences to the size of the
    # weights. So the weights are compared after the first epoch, and the losses after
    # the last epoch both ran.
    def relative_difference(got, want):  # largest of max |got - want| / max |want|
        return max(float(np.max(np.abs(a - r)) / max(float(np.max(np.abs(r))), 1e-300))
                   for a, r in zip(got, want))

    W1, b1, _ = reference.fit(W0, b0, net.activations, Xtr, Ytr, epochs=1, **settings)
    steps = -(-len(Xtr) // args.batch_size)
    print(f"after epoch 1 ({steps} steps), bpfast against the reference: same weights to "
          f"{relative_difference(at_ref[1], W1 + b1):.1e}")
    if ref_epochs > 1:
        A = reference.forward(Wr, br, net.activations, Xte)
        print(f"after epoch {ref_epochs}: held-out accuracy {held_acc[ref_epochs - 1]:.3f} "
              f"(reference {float(np.mean(A.argmax(axis=1) == yte)):.3f}), training loss "
              f"{history.loss[ref_epochs - 1]:.4g} (reference {ref_loss[-1]:.4g}); "
              f"weights apart by {relative_difference(at_ref[ref_epochs], Wr + br):.1e}, "
              f"rounding differences grown over {steps * ref_epochs} steps")
    if plt is not None:
        _plot_losses(plt, args.plot, {"training (mean over the epoch)": history.loss,
                                      "held-out": held_loss},
                     f"bpfast demo: {_arch(net)}, {args.optimizer}, batch {args.batch_size}; "
                     f"held-out accuracy {held_acc[-1]:.3f}", "cross-entropy")
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------

SIDECAR_FORMAT = "bpfast-cli"
SIDECAR_VERSION = 1


def sidecar_path(model_path):
    """The JSON file beside a model that keeps what the model file cannot: column names,
    class labels and input scaling (``model.npz`` -> ``model.npz.json``)."""
    return os.fspath(model_path) + ".json"


def _save_with_sidecar(net, path, side):
    """Write the model to ``path`` and ``side`` (its checksum filled in) beside it.

    The model goes to a temporary file first, then the sidecar is written, then the model
    is renamed into place: an interruption or a failure at any step leaves either the old
    model (whose checksum a new sidecar does not match, so predict refuses the pair) or
    the new model with its new sidecar, never a new model beside a missing or stale one.
    """
    from .io import atomic_write, temporary_beside

    with temporary_beside(path, ".npz.tmp") as tmp:
        net.save(tmp)
        side["model_sha256"] = _sha256(tmp)
        text = json.dumps(side, indent=1, allow_nan=False)  # strict JSON: no NaN, Infinity
        atomic_write(sidecar_path(path), lambda f: f.write(text), binary=False,
                     encoding="utf-8")
        os.replace(tmp, path)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_names(text, option):
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise CLIError(f"{option}: expected comma-separated column names, got {text!r}")
    if len(set(names)) != len(names):
        raise CLIError(f"{option}: a column is named twice in {text!r}")
    return names


def _parse_hidden(text):
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise CLIError(f"--hidden: expected layer sizes like 64,32, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise CLIError(f"--hidden: layer sizes must be positive, got {text!r}")
    return sizes


def _output_names(table, names):
    out = []
    for n in names:
        w = table.width(n)
        out.extend([n] if w == 1 and table.columns[n].ndim == 1 else
                   [f"{n}[{i}]" for i in range(w)])
    return out


def _train(args):
    """Train a network on a CSV or NPZ file and save it (with a JSON sidecar)."""
    import bpfast
    from bpfast.datasets import read_table
    from bpfast.training import evaluate_loss

    plt = _need_matplotlib() if args.plot else None
    _check_out_dir(args.out)
    _check_out_dir(sidecar_path(args.out))
    if args.plot:
        _check_out_dir(args.plot)
    table = read_table(args.data)
    if args.target is None:
        if table.kind == "npz" and "X" in table.columns and "Y" in table.columns:
            targets = ["Y"]
        else:
            raise CLIError(f"--target is required: name the target column(s) of {args.data} "
                           f"(its columns: {', '.join(table.names)})")
    else:
        targets = _split_names(args.target, "--target")
    table._require(targets, "target")
    if args.features:
        features = _split_names(args.features, "--features")
        overlap = set(features) & set(targets)
        if overlap:
            raise CLIError(f"--features: {', '.join(sorted(overlap))} is also a target")
    else:
        features = [n for n in table.names if n not in targets]
    if not features:
        raise CLIError(f"{args.data}: no feature columns left besides the target(s)")
    X = table.numeric(features, "feature")

    classes = None
    if args.loss == "cross_entropy" and len(targets) == 1 and table.width(targets[0]) == 1:
        labels = table.labels(targets[0])
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise CLIError(f"{args.data}: target {targets[0]!r} holds only one class "
                           f"({classes[0]!r}); cross_entropy needs at least two")
        Y = np.eye(len(classes))[codes]
    else:
        Y = table.numeric(targets, "target")
        codes = Y.argmax(axis=1) if args.loss == "cross_entropy" else None
        if args.loss == "cross_entropy" and ((Y < 0).any() or (Y > 1).any()):
            raise CLIError(f"{args.data}: cross_entropy targets over several columns must be "
                           "probabilities in [0, 1] (one-hot rows); give one column of class "
                           "labels instead")

    m = X.shape[0]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(m)
    n_val = int(round(args.validation * m))
    if args.validation > 0 and n_val == 0:
        n_val = 1
    if m - n_val < 1:
        raise CLIError(f"{args.data}: {m} rows leave none to train on with "
                       f"--validation {args.validation}")
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])

    dtype = np.dtype(args.dtype)
    hidden = _parse_hidden(args.hidden)
    sizes = [X.shape[1]] + hidden + [Y.shape[1]]
    # parameters, gradients and the optimizer's state (Adam keeps two arrays)
    _require_memory(4 * dtype.itemsize * _n_parameters(sizes),
                    f"a {'-'.join(map(str, sizes))} network", "--hidden")

    scale = None
    if args.scale == "standard":
        mean, std = _fit_scaling(X[train])
        X = _standardise(X, mean, std, _output_names(table, features))
        scale = {"mean": mean.tolist(), "std": std.tolist()}

    X, Y = X.astype(dtype), Y.astype(dtype)
    if args.loss == "cross_entropy":
        if args.output_activation not in (None, "softmax"):
            raise CLIError("--output-activation: cross_entropy needs a softmax output layer, "
                           f"got {args.output_activation!r}")
        out_act = "softmax"
    else:
        out_act = args.output_activation or "identity"
    net = bpfast.Network(sizes, activations=[args.activation] * len(hidden) + [out_act],
                         dtype=dtype, seed=args.seed)
    Xtr, Ytr, Xv, Yv = X[train], Y[train], X[val], Y[val]

    print(f"bpfast train: {args.data}, {m:,} rows: {len(train):,} to train on, "
          f"{len(val):,} for validation; {len(features)} feature column(s) -> "
          f"{X.shape[1]} inputs, target {', '.join(targets)}"
          + (f" ({len(classes)} classes)" if classes is not None else ""))
    print(f"{net}: {args.optimizer}, learning rate {args.learning_rate}, batch "
          f"{args.batch_size}, {args.epochs} epochs, loss {args.loss}", flush=True)

    bar = _progress(args.epochs, "training", args.quiet)
    val_acc = []
    # wall time, so that the rates shown include the validation accuracy computed here
    # and the progress display, which the epochs' own times (history.time) leave out
    clock = {"start": time.perf_counter()}
    clock["last"] = clock["start"]

    def callback(net, epoch, history):
        label = LOSS_LABELS[args.loss]
        post = {label: f"{history.loss[-1]:.4g}"}
        if history.val_loss:
            post["val_" + label] = f"{history.val_loss[-1]:.4g}"
        if codes is not None and len(val):
            val_acc.append(_accuracy(net, Xv, codes[val]))
            post["val_acc"] = f"{val_acc[-1]:.3f}"
        now = time.perf_counter()
        post["samples/s"] = _fmt_rate(len(Xtr) / max(now - clock["last"], 1e-9))
        clock["last"] = now
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    clock["start"] = clock["last"] = time.perf_counter()
    try:
        history = net.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, optimizer=args.optimizer,
                          loss=args.loss, l2=args.l2, seed=args.seed,
                          validation_data=(Xv, Yv) if len(val) else None, callback=callback)
    finally:
        bar.close()
    wall = time.perf_counter() - clock["start"]

    for name, rows in (("training", train), ("validation", val)):
        if not len(rows):
            continue
        value = evaluate_loss(net, X[rows], Y[rows], args.loss)
        line = f"{name + ':':<12} {LOSS_LABELS[args.loss]} loss {value:.6g}"
        if codes is not None:
            line += f", accuracy {_accuracy(net, X[rows], codes[rows]):.4f}"
        else:
            r2, mae, mse = _regression_metrics(net.forward(X[rows]), Y[rows])
            line += f", MSE {mse:.6g}, MAE {mae:.6g}, R^2 {r2:.4f}"
        print(line + f" ({len(rows):,} rows)")
    print(f"time: {wall:.3f} s wall for {history.epochs} epochs, validation and progress "
          f"included ({_fmt_rate(history.epochs * len(train) / max(wall, 1e-9))} samples/s; "
          f"the epochs' training and validation passes alone {sum(history.time):.3f} s)")

    side = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "model_sha256": None,  # filled in by _save_with_sidecar
        "sizes": list(net.sizes),
        "data": os.path.basename(args.data),
        "loss": args.loss,
        "features": features,
        "feature_widths": [table.width(n) for n in features],
        "targets": targets,
        "outputs": _output_names(table, targets),
        "classes": None if classes is None else [
            int(c) if isinstance(c, (np.integer, int)) else str(c) for c in classes],
        "scale": scale,
    }
    _save_with_sidecar(net, args.out, side)
    what = "class labels, column names and input scaling" if classes is not None else \
        "column names and input scaling"
    print(f"wrote {args.out} and {sidecar_path(args.out)} ({what}: bpfast's model files "
          "hold only the network)")
    if plt is not None:
        _plot_losses(plt, args.plot, {"training (mean over the epoch)": history.loss,
                                      "validation": history.val_loss},
                     f"bpfast train: {os.path.basename(args.data)}, {_arch(net)}", args.loss)
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------

#: The largest sidecar file predict reads.
MAX_SIDECAR_BYTES = 64 << 20


def _names(side, key, path, count=None):
    """``side[key]`` as a list of distinct non-empty strings (``count`` of them)."""
    value = side.get(key)
    if (not isinstance(value, list) or not value
            or not all(isinstance(n, str) and n for n in value)):
        raise CLIError(f"{path}: {key!r} must be a list of column names, got {value!r:.80}")
    if len(set(value)) != len(value):
        raise CLIError(f"{path}: {key!r} names a column twice")
    if count is not None and len(value) != count:
        raise CLIError(f"{path}: {len(value)} {key} for the model's {count}")
    return value


def _sidecar_widths(side, path, features, n_inputs):
    widths = side.get("feature_widths")
    if (not isinstance(widths, list) or len(widths) != len(features)
            or not all(type(w) is int and w >= 1 for w in widths)):
        raise CLIError(f"{path}: 'feature_widths' must give a positive width for each of "
                       f"the {len(features)} features")
    if sum(widths) != n_inputs:
        raise CLIError(f"{path}: the features are {sum(widths)} inputs wide, the model "
                       f"takes {n_inputs}")


def _sidecar_classes(side, path, n_outputs):
    classes = side.get("classes")
    if classes is None:
        return None
    if (not isinstance(classes, list)
            or not all(type(c) in (int, str) for c in classes)):
        raise CLIError(f"{path}: 'classes' must be a list of class labels (integers or "
                       f"text), got {classes!r:.80}")
    if len(classes) != n_outputs or len(set(classes)) != len(classes):
        raise CLIError(f"{path}: {len(classes)} class labels (distinct: "
                       f"{len(set(classes))}) for the model's {n_outputs} outputs")
    if len(side.get("targets") or []) != 1:
        raise CLIError(f"{path}: class labels need exactly one target column")
    return classes


def _sidecar_scale(side, path, n_inputs):
    scale = side.get("scale")
    if scale is None:
        return None
    if not isinstance(scale, dict):
        raise CLIError(f"{path}: 'scale' must be null or an object with 'mean' and 'std'")
    out = {}
    for key in ("mean", "std"):
        v = scale.get(key)
        if (not isinstance(v, list) or len(v) != n_inputs
                or not all(type(x) in (int, float) and np.isfinite(x) for x in v)):
            raise CLIError(f"{path}: scale {key!r} must be {n_inputs} finite numbers "
                           "(one per model input)")
        out[key] = np.array(v, dtype=np.float64)
    if not (out["std"] > 0).all():
        raise CLIError(f"{path}: scale 'std' must be positive")
    return out


def _read_sidecar(model_path, net):
    """The sidecar beside ``model_path``, checked entry by entry against ``net``, or None."""
    path = sidecar_path(model_path)
    if not os.path.exists(path):
        return None
    try:
        if os.path.getsize(path) > MAX_SIDECAR_BYTES:
            raise CLIError(f"{path}: {os.path.getsize(path):,} bytes is too large for a "
                           "bpfast sidecar file")
        with open(path, encoding="utf-8") as f:
            side = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CLIError(f"{path}: not a readable bpfast sidecar file "
                       f"({type(err).__name__}: {err})") from None
    if (not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT
            or side.get("version") != SIDECAR_VERSION):
        raise CLIError(f"{path}: not a bpfast sidecar file of version {SIDECAR_VERSION}")
    if side.get("model_sha256") != _sha256(model_path):
        raise CLIError(f"{path} was written for another version of {model_path}; "
                       "retrain, or delete the sidecar to predict from raw columns")
    if side.get("sizes") != list(net.sizes):
        raise CLIError(f"{path}: describes a {side.get('sizes')!r:.80} network, the model is "
                       f"{list(net.sizes)}")
    features = _names(side, "features", path)
    _sidecar_widths(side, path, features, net.sizes[0])
    targets = _names(side, "targets", path)
    classes = _sidecar_classes(side, path, net.sizes[-1])
    outputs = _names(side, "outputs", path, None if classes else net.sizes[-1])
    if side.get("loss") not in ("mse", "cross_entropy"):
        raise CLIError(f"{path}: unknown loss {side.get('loss')!r:.80}")
    return {"features": features, "outputs": outputs, "scale": _sidecar_scale(
        side, path, net.sizes[0]), "classes": classes, "targets": targets,
        "loss": side["loss"]}


def _predict(args):
    """Predict with a trained model on a CSV or NPZ file; write the predictions as CSV."""
    import bpfast
    from bpfast.datasets import read_table, write_csv

    if args.out not in (None, "-"):
        _check_out_dir(args.out)
    net = bpfast.load(args.model)
    side = _read_sidecar(args.model, net)
    table = read_table(args.data)
    if side is not None:
        X = table.numeric(side["features"], "feature")
        source = f"columns {', '.join(side['features'])}"
    else:
        names = ["X"] if table.kind == "npz" and "X" in table.columns else table.names
        X = table.numeric(names, "feature")
        source = (f"every column ({len(names)}); no sidecar {sidecar_path(args.model)} names "
                  "the model's columns")
    if X.shape[1] != net.sizes[0]:
        raise CLIError(f"the model {args.model} expects {net.sizes[0]} inputs, but "
                       f"{args.data} gives {X.shape[1]} ({source})")
    if side is not None and side["scale"] is not None:
        X = _standardise(X, side["scale"]["mean"], side["scale"]["std"],
                         _output_names(table, side["features"]))
    A = net.forward(X.astype(net.dtype))
    precision = 9 if net.dtype == np.float32 else None
    info = sys.stderr if args.out in (None, "-") else sys.stdout
    if args.quiet:
        info = _Discard()

    if side is not None and side["classes"] is not None:
        classes = side["classes"]
        target = side["targets"][0]
        pred = np.asarray(classes, dtype=object)[A.argmax(axis=1)]
        header = [target] + [f"p_{c}" for c in classes]
        columns = [pred.astype(str)] + [A[:, k].astype(np.float64) for k in range(A.shape[1])]
        if target in table.columns:  # the data holds the answers: say how well it did
            true = table.columns[target].reshape(-1)
            if true.dtype.kind == "f":
                true = np.where(true == np.round(true), true, np.nan)
                same = np.array([t == c for t, c in zip(true, pred)])
            else:
                same = np.array([str(t) == str(c) for t, c in zip(true, pred)])
            print(f"accuracy on {args.data}: {same.mean():.4f} ({int(same.sum())} of "
                  f"{len(same)} right)", file=info)
    else:
        header = side["outputs"] if side is not None else \
            [f"y{k}" for k in range(A.shape[1])]
        columns = [A[:, k].astype(np.float64) for k in range(A.shape[1])]
        if side is not None and all(t in table.columns for t in side["targets"]):
            r2, mae, mse = _regression_metrics(A, table.numeric(side["targets"], "target"))
            print(f"on {args.data}: R^2 {r2:.4f}, MAE {mae:.6g}, MSE {mse:.6g} "
                  f"({len(A):,} rows)", file=info)
    write_csv(args.out, header, columns, precision=precision)
    if args.out not in (None, "-"):
        print(f"wrote {len(A):,} predictions to {args.out}", file=info)
    return 0


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------

def _bench(args):
    """Time bpfast against the NumPy reference and the installed peers (PyTorch, JAX,
    scikit-learn) and against the machine's GEMM rate; print the table."""
    from bpfast import benchmarks

    if args.plot:
        _need_matplotlib()
    for path in (args.plot, args.json):
        if path:
            _check_out_dir(path)
    try:
        return benchmarks.run_from_args(args)
    except (benchmarks.UsageError, benchmarks.MissingExtra) as err:
        raise CLIError(str(err)) from None


def _blas(args):
    """Print what bpfast computes with here: the BLAS for large products and its thread
    count, and the processor features the kernels use (after
    BPFAST_DISABLE_CPU_FEATURES)."""
    import bpfast

    info = bpfast.blas_info()
    print(f"BLAS: {info['backend']} ({info.get('library') or 'not found'})")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("BLAS threads: unknown (install threadpoolctl to see them)")
    else:
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                print(f"BLAS threads: {pool['num_threads']} "
                      f"({pool.get('internal_api')}, {pool.get('filepath')})")
    print("CPU features: " + (", ".join(bpfast.cpu_features()) or "none (portable kernels)"))
    return 0


# --------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that keeps bpfast's promise for usage errors: one line, exit status 2."""

    def error(self, message):
        print(f"bpfast: error: {_one_line(message)} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser():
    import bpfast
    from bpfast import benchmarks
    from bpfast.registry import ACTIVATIONS, OPTIMIZERS

    parser = _Parser(
        prog="bpfast",
        description="Fast, exact back-propagation for fully connected networks.",
        epilog="Run `bpfast COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"bpfast {bpfast.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser(
        "check",
        help="compute a gradient and check it against the NumPy reference and finite differences",
        description=_check.__doc__,
    )
    check.add_argument("--sizes", default="64-32-10", help="layer sizes, e.g. 64-32-10")
    check.add_argument("--activation", default="sigmoid", help="activation of every layer")
    check.add_argument("--samples", type=_positive(int), default=256,
                       help="number of samples m")
    check.add_argument("--seed", type=_seed, default=0, help="random seed")
    check.set_defaults(run=_check)

    demo = sub.add_parser(
        "demo", help="train a digit classifier on the embedded 8x8 digits (no network needed)",
        description=_demo.__doc__,
    )
    demo.add_argument("--epochs", type=_positive(int), default=20,
                      help="training epochs (default 20)")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="seeds the held-out split and the initial weights (default 0)")
    demo.add_argument("--batch-size", type=_positive(int), default=8, help="default 8")
    demo.add_argument("--learning-rate", type=_positive(float), default=0.1,
                      help="default 0.1 (try 0.005 with adam)")
    demo.add_argument("--optimizer", choices=list(OPTIMIZERS),
                      default="sgd", help="default sgd")
    demo.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    demo.add_argument("--plot", metavar="PNG",
                      help=f"write the loss curves to a PNG file (needs {PLOT_HINT})")
    demo.add_argument("--quiet", action="store_true",
                      help="print nothing but errors (and the plot, if asked for)")
    demo.set_defaults(run=_demo)

    train = sub.add_parser(
        "train", help="train a network on a CSV or NPZ file and save it",
        description=_train.__doc__ + " FILE is a .csv with a header row, or an .npz with "
        "arrays X and Y (then --target defaults to Y) or one array per named column. "
        "Every column that is not a target is an input. With --loss cross_entropy, a single "
        "target column of class labels (integers or text) is one-hot encoded; the labels, "
        "the column names and the input scaling go to a sidecar MODEL.json beside the "
        "model (model.npz.json for model.npz).",
    )
    train.add_argument("--data", required=True, metavar="FILE", help=".csv or .npz file")
    train.add_argument("--target", metavar="COLUMNS",
                       help="target column(s), comma-separated")
    train.add_argument("--features", metavar="COLUMNS",
                       help="input columns, comma-separated (default: all but the targets)")
    train.add_argument("--hidden", default="64", metavar="SIZES",
                       help="hidden layer sizes, e.g. 64,32 ('none' for no hidden layer; "
                            "default 64)")
    train.add_argument("--activation", default="relu", choices=ACTIVATIONS[:7],
                       help="activation of the hidden layers (default relu)")
    train.add_argument("--output-activation", choices=ACTIVATIONS,
                       help="activation of the output layer (default: softmax for "
                            "cross_entropy, identity for mse)")
    train.add_argument("--loss", choices=["mse", "cross_entropy"], default="mse",
                       help="mse: E = 1/(2m) sum (A - Y)^2, half the mean squared error "
                            "(regression, default; reported as half_mse); cross_entropy: "
                            "classification with a softmax output")
    train.add_argument("--epochs", type=_positive(int), default=50, help="default 50")
    train.add_argument("--batch-size", type=_positive(int), default=32, help="default 32")
    train.add_argument("--learning-rate", type=_positive(float), default=0.005,
                       help="default 0.005")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS),
                       default="adam", help="default adam")
    train.add_argument("--l2", type=float, default=0.0,
                       help="L2 penalty on the weights (default 0)")
    train.add_argument("--validation", type=_fraction, default=0.2, metavar="FRACTION",
                       help="fraction of the rows held out for validation (default 0.2)")
    train.add_argument("--scale", choices=["standard", "none"], default="standard",
                       help="standardise the inputs with the training rows' mean and "
                            "standard deviation (default) or use them as they are")
    train.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seeds the split, the initial weights and the shuffling")
    train.add_argument("--out", default="model.npz", metavar="MODEL",
                       help="model file to write (default model.npz; its sidecar is "
                            "MODEL.json)")
    train.add_argument("--plot", metavar="PNG",
                       help=f"write the loss curves to a PNG file (needs {PLOT_HINT})")
    train.add_argument("--quiet", action="store_true",
                       help="print nothing but errors; write the model (and plot)")
    train.set_defaults(run=_train)

    predict = sub.add_parser(
        "predict", help="predict with a trained model; write the predictions as CSV",
        description=_predict.__doc__ + " The model's sidecar MODEL.json (written by "
        "`bpfast train`) selects the input columns by name, scales them, and names the "
        "output columns; classification writes the predicted label and one probability "
        "column per class. Without a sidecar every column (or an .npz's X) is an input.",
    )
    predict.add_argument("--model", required=True, metavar="MODEL", help="model .npz file")
    predict.add_argument("--data", required=True, metavar="FILE", help=".csv or .npz file")
    predict.add_argument("--out", metavar="CSV",
                         help="predictions file (default: standard output)")
    predict.add_argument("--quiet", action="store_true",
                         help="print nothing but errors and the predictions")
    predict.set_defaults(run=_predict)

    bench = sub.add_parser(
        "bench", help="time bpfast against the NumPy reference and installed peers",
        description=_bench.__doc__,
    )
    benchmarks.add_arguments(bench)
    bench.set_defaults(run=_bench)

    blas = sub.add_parser(
        "blas", help="print the BLAS, its threads and the CPU features the kernels use",
        description=_blas.__doc__,
    )
    blas.set_defaults(run=_blas)
    return parser


def _quiet_reports(args):
    """With ``--quiet``, demo's and train's standard output (their reports) goes nowhere:
    what they are asked for goes to files. predict silences its own reports, since its
    standard output may carry the predictions."""
    if getattr(args, "quiet", False) and args.command in ("demo", "train"):
        return contextlib.redirect_stdout(_Discard())
    return contextlib.nullcontext()


def _one_line(err):
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv=None):
    import bpfast
    from bpfast.datasets import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        with _quiet_reports(args):
            return args.run(args)
    except (CLIError, DataError, bpfast.ModelFileError, bpfast.DivergenceError,
            ValueError, TypeError) as err:
        print(f"bpfast: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `bpfast predict ... | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except OSError as err:
        name = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"bpfast: error: {name}{_one_line(err.strerror or err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bpfast: interrupted", file=sys.stderr)
        return 130
    except MemoryError as err:
        print(f"bpfast: error: out of memory ({_one_line(err)}); try smaller sizes or "
              "less data", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print("bpfast: error: an input is nested too deeply to read", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
