"""The scikit-learn estimators behind :mod:`bpfast.sklearn` (their public path, which
documents them): scikit-learn's training loops replaced by the engine's ``Trainer``."""
import os
import re
import warnings
from contextlib import nullcontext
from itertools import pairwise

import numpy as np
import scipy.optimize
import scipy.sparse

#: the oldest scikit-learn whose MLP training loops this module replaces (sample_weight
#: in ``_fit_stochastic`` / ``_fit_lbfgs`` and the lbfgs options helper came in 1.7)
_SKLEARN_FLOOR = (1, 7)

try:
    import sklearn
except ImportError as err:
    raise ImportError(
        "bpfast.sklearn needs scikit-learn, which is not installed: "
        "install it with `pip install 'bpfast[sklearn]'`."
    ) from err


def _major_minor(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "1.7.0rc1"; (0, 0) if unreadable."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


if _major_minor(sklearn.__version__) < _SKLEARN_FLOOR:
    raise ImportError(
        f"bpfast.sklearn needs scikit-learn >= {'.'.join(map(str, _SKLEARN_FLOOR))}, "
        f"found {sklearn.__version__}: upgrade with `pip install -U 'bpfast[sklearn]'`."
    )

from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight
from threadpoolctl import threadpool_limits

try:
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
except ImportError:  # scikit-learn 1.7 passes L-BFGS-B's iprint whatever SciPy's version
    def _get_additional_lbfgs_options_dict(key, value):
        return {key: value}

from .. import engine
from ..engine import shuffle_like_random_state
from ..registry import SKLEARN_ACTIVATIONS, SKLEARN_LOSSES

__all__ = ["MLPClassifier", "MLPRegressor"]


def _dense(X, dtype):
    """A C-contiguous dense array of ``dtype`` (a copy only when needed)."""
    if scipy.sparse.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=dtype)


#: the most bytes a sparse X's densified chunk of batches takes (always one batch at least)
_CHUNK_BYTES = 32 * 2**20


class _SparseRows:
    """A sparse ``X`` for the stochastic solvers, densified a chunk at a time.

    The kernels take dense rows, so each epoch walks the rows in the epoch's order in
    chunks of whole batches, and densifies each chunk into one buffer kept for the fit:
    memory is the CSR matrix's plus one chunk, and the batches are the dense path's.
    """

    def __init__(self, X, dtype, batch_size: int):
        self.X = X.tocsr().astype(dtype, copy=False)
        self.shape = self.X.shape
        row_bytes = self.shape[1] * np.dtype(dtype).itemsize
        batches = max(1, _CHUNK_BYTES // max(1, batch_size * row_bytes))
        self.rows = min(self.shape[0], batches * batch_size)
        self.buffer = np.zeros((self.rows, self.shape[1]), dtype)

    def chunks(self, order):
        """(rows, dense X[rows]) for consecutive chunks of the epoch's ``order`` (None:
        data order); the dense array is the buffer, valid until the next step."""
        for start in range(0, self.shape[0], self.rows):
            stop = start + self.rows
            rows = order[start:stop] if order is not None else slice(start, stop)
            part = self.X[rows]
            dense = self.buffer[:part.shape[0]]
            part.toarray(out=dense)  # adds into the buffer, which is all zeros here
            yield rows, dense
            # back to zeros at the stored entries only: the rest never changed
            dense[np.repeat(np.arange(part.shape[0]), np.diff(part.indptr)),
                  part.indices] = 0


def _joblib_worker_threads():
    """Threads one fit may use when it runs in a joblib worker process; None elsewhere.

    joblib starts its worker processes (loky) with ``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS`` and the like set to the worker's share of the cores
    (``cpu_count() // n_jobs``, or ``inner_max_num_threads``): that share. Worker threads
    (the threading backend) are left alone: the pools belong to the whole process, and
    changing their size from one thread while others run BLAS calls does not hold.
    """
    try:
        from joblib.externals.loky import process_executor
        from joblib.parallel import get_active_backend
    except ImportError:
        return None
    backend, _ = get_active_backend()
    if getattr(backend, "nesting_level", 0) < 1 or process_executor._CURRENT_DEPTH < 1:
        return None
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _thread_limit_for_fit():
    """A context limiting the BLAS to a joblib worker's share of the cores for one fit
    (bpfast's own kernel pool sizes itself from the BLAS's count, so it follows); no
    limit outside joblib's worker processes."""
    threads = _joblib_worker_threads()
    if threads is None:
        return nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


class _CompiledTraining:
    """The training loops of scikit-learn's ``BaseMultilayerPerceptron``, on bpfast kernels.

    Mixed in before scikit-learn's estimator classes; overrides ``_fit_stochastic`` and
    ``_fit_lbfgs`` with the same signatures and semantics.
    """

    def _fit(self, X, y, sample_weight=None, incremental=False):
        # inside a joblib worker (e.g. GridSearchCV(n_jobs=k)), the pools keep to this
        # worker's share of the cores, or k fits oversubscribe them
        with _thread_limit_for_fit():
            return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)

    # -- what the kernels are told ------------------------------------------------------

    def _kernel_spec(self, y):
        """(activation names, bpfast loss, loss scale), or None when scikit-learn's
        code trains: the output layer and the loss do not pair canonically, or the targets
        are not numbers (scikit-learn then fails with its own error)."""
        if y.dtype.kind not in "biuf":
            return None
        n_outputs = y.shape[1]
        loss = "log_loss" if is_classifier(self) else self.loss
        ours = SKLEARN_LOSSES.get((loss, self.out_activation_))
        if ours is None:
            return None
        names = ([SKLEARN_ACTIVATIONS[self.activation]] * (self.n_layers_ - 2)
                 + [SKLEARN_ACTIVATIONS[self.out_activation_]])
        # scikit-learn's squared error averages over the outputs; its gradient does not
        scale = 1.0 / n_outputs if ours == "mse" else 1.0
        return names, ours, scale

    def _network_fits(self, layer_units):
        """Whether the stored parameters have the shapes ``layer_units`` asks for.

        They do not after ``set_params(hidden_layer_sizes=...)`` followed by a warm start
        or ``partial_fit``: scikit-learn's own loop then runs, so the outcome (its error,
        or training of the stored network) is scikit-learn's.
        """
        coefs = [np.shape(c) for c in self.coefs_]
        intercepts = [np.shape(v) for v in self.intercepts_]
        return (coefs == list(pairwise(layer_units))
                and intercepts == [(n,) for n in layer_units[1:]])

    def _training_dtype(self, X_dtype):
        """X's dtype, or float64 when any parameter is float64 (NumPy's promotion, as
        scikit-learn's own products of X with the parameters)."""
        return np.result_type(
            X_dtype, *[np.asarray(p).dtype for p in self.coefs_ + self.intercepts_]
        )

    # -- stochastic solvers -------------------------------------------------------------

    def _fit_stochastic(self, X, y, sample_weight, activations, deltas, coef_grads,
                        intercept_grads, layer_units, incremental):
        spec = self._kernel_spec(y)
        if spec is None or not self._network_fits(layer_units):
            return super()._fit_stochastic(
                X, y, sample_weight, activations, deltas, coef_grads, intercept_grads,
                layer_units, incremental,
            )
        names, loss, loss_scale = spec
        params = self.coefs_ + self.intercepts_
        if not incremental or not hasattr(self, "_optimizer"):
            # scikit-learn's optimizer objects keep the learning-rate schedule and, between
            # calls, the optimizer state; the kernel does the updates
            if self.solver == "sgd":
                self._optimizer = SGDOptimizer(
                    params, self.learning_rate_init, self.learning_rate, self.momentum,
                    self.nesterovs_momentum, self.power_t,
                )
            elif self.solver == "adam":
                self._optimizer = AdamOptimizer(
                    params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon,
                )
        optimizer = self._optimizer

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            # stratified like scikit-learn, except for multilabel targets
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(
                *arrays, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify,
            )
            X_train, X_val, y_train, y_val = split[:4]
            sw_train, sw_val = split[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped"
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        dtype = self._training_dtype(X_train.dtype)
        # the type of loss_: scikit-learn multiplies each batch's loss by the batch's row
        # count, an np.int64 when batch_size was given (np.clip), which promotes float32
        loss_type = dtype.type if self.batch_size == "auto" else np.float64
        if scipy.sparse.issparse(X_train):
            Xk = _SparseRows(X_train, dtype, batch_size)
        else:
            Xk = _dense(X_train, dtype)
        Yk = np.ascontiguousarray(y_train, dtype=dtype)
        wk = None if sw_train is None else np.ascontiguousarray(sw_train, dtype=dtype)

        # the kernel's layout: W^l = coefs_[l].T, C-contiguous; private copies
        original_coefs, original_intercepts = self.coefs_, self.intercepts_
        W = [np.array(c, dtype=dtype, order="F").T for c in original_coefs]
        b = [np.array(v, dtype=dtype) for v in original_intercepts]
        trainer = engine.Trainer(W, b, names, batch_size, loss, _optimizer_name(optimizer),
                                 Xk.shape[1])
        self._load_optimizer_state(optimizer, trainer.state, len(W))
        # during training coefs_ are views of the kernel's weights: validation scores
        # (early stopping) and the NumPy fallback see the current parameters
        self.coefs_ = [w.T for w in W]
        self.intercepts_ = list(b)
        sample_idx = np.arange(n_samples, dtype=np.intp)
        try:
            try:
                self.n_iter_ = 0
                for it in range(self.max_iter):
                    if self.shuffle:
                        # sklearn.utils.shuffle(sample_idx, random_state=...): the same
                        # draws, in place in compiled code when the generator allows
                        if not shuffle_like_random_state(self._random_state, sample_idx):
                            perm = self._random_state.permutation(n_samples)
                            sample_idx = sample_idx[perm]
                        order = sample_idx
                    else:
                        order = None
                    loss_sum = self._epoch(trainer, optimizer, W, b, Xk, Yk, wk, order,
                                           batch_size, loss_scale)
                    self.n_iter_ += 1
                    self.loss_ = loss_type(loss_sum / n_samples)
                    self.t_ += n_samples
                    self.loss_curve_.append(self.loss_)
                    if self.verbose:
                        print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

                    self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                    optimizer.iteration_ends(self.t_)

                    if self._no_improvement_count > self.n_iter_no_change:
                        if early_stopping:
                            msg = (
                                "Validation score did not improve more than "
                                "tol=%f for %d consecutive epochs."
                                % (self.tol, self.n_iter_no_change)
                            )
                        else:
                            msg = (
                                "Training loss did not improve more than tol=%f"
                                " for %d consecutive epochs."
                                % (self.tol, self.n_iter_no_change)
                            )
                        if optimizer.trigger_stopping(msg, self.verbose):
                            break
                        self._no_improvement_count = 0

                    if incremental:
                        break

                    if self.n_iter_ == self.max_iter:
                        warnings.warn(
                            "Stochastic Optimizer: Maximum iterations (%d) "
                            "reached and the optimization hasn't converged yet."
                            % self.max_iter,
                            ConvergenceWarning,
                        )
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
        finally:
            self._save_optimizer_state(optimizer, trainer.state, len(W))
            self.coefs_ = [_write_back(o, w.T) for o, w in zip(original_coefs, W)]
            self.intercepts_ = [_write_back(o, v) for o, v in zip(original_intercepts, b)]

        if early_stopping:
            # restore best weights
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts

    def _epoch(self, trainer, optimizer, W, b, X, Y, w, order, batch_size, loss_scale):
        """One epoch; returns the sum of batch losses times batch rows. A sparse ``X``
        (:class:`_SparseRows`) runs chunk by chunk, each chunk's rows in epoch order."""
        if not isinstance(X, _SparseRows):
            return self._dense_epoch(trainer, optimizer, W, b, X, Y, w, order, batch_size,
                                     loss_scale)
        loss_sum = 0.0
        for rows, dense in X.chunks(order):
            loss_sum += self._dense_epoch(trainer, optimizer, W, b, dense, Y[rows],
                                          None if w is None else w[rows], None,
                                          batch_size, loss_scale)
        return loss_sum

    def _dense_epoch(self, trainer, optimizer, W, b, X, Y, w, order, batch_size,
                     loss_scale):
        """One epoch over dense rows in the kernel; returns the sum of batch losses times
        batch rows.

        The kernel stops before the update of a batch whose loss is not finite (overflow,
        a batch of zero total weight, non-finite parameters); scikit-learn carries on with
        that batch's update, so that batch runs in NumPy (:meth:`_numpy_step`) and the
        kernel resumes with the next one. Once a parameter is NaN or infinite, the rest of
        training runs in NumPy: from there scikit-learn's NaN propagation (e.g. through
        relu) is followed exactly, and fit ends with scikit-learn's error anyway.
        """
        n = X.shape[0]
        start, loss_sum = 0, 0.0
        numpy_only = not trainer.parameters_finite()
        while start < n:
            if not numpy_only:
                if start == 0:
                    Xs, Ys, ws, o = X, Y, w, order
                else:
                    rest = order[start:] if order is not None else slice(start, None)
                    Xs, Ys = X[rest], Y[rest]
                    ws = None if w is None else w[rest]
                    o = None
                batch_sum, bad = self._kernel_epoch(trainer, optimizer, Xs, Ys, ws, o,
                                                    loss_scale)
                loss_sum += batch_sum
                if bad < 0:
                    break
                start += bad * batch_size
            stop = min(start + batch_size, n)
            rows = order[start:stop] if order is not None else slice(start, stop)
            batch_loss = self._numpy_step(trainer, optimizer, W, b, X[rows], Y[rows],
                                          None if w is None else w[rows])
            loss_sum += batch_loss * (stop - start)
            start = stop
            numpy_only = numpy_only or not trainer.parameters_finite()
        return loss_sum

    def _kernel_epoch(self, trainer, optimizer, X, Y, w, order, loss_scale):
        """``trainer.epoch`` with the optimizer's current settings; (loss sum, bad batch)."""
        if isinstance(optimizer, AdamOptimizer):
            step = engine.Step(optimizer.learning_rate_init, beta1=optimizer.beta_1,
                               beta2=optimizer.beta_2, epsilon=optimizer.epsilon,
                               l2=self.alpha, loss_scale=loss_scale)
            loss_sum, optimizer.t, bad = trainer.epoch(X, Y, w, order, step, optimizer.t)
            if optimizer.t > 0:  # what AdamOptimizer leaves after its last step
                optimizer.learning_rate = (
                    optimizer.learning_rate_init
                    * np.sqrt(1 - optimizer.beta_2**optimizer.t)
                    / (1 - optimizer.beta_1**optimizer.t)
                )
        else:
            step = engine.Step(optimizer.learning_rate, optimizer.momentum, l2=self.alpha,
                               loss_scale=loss_scale)
            loss_sum, _, bad = trainer.epoch(X, Y, w, order, step)
        return loss_sum, bad

    def _numpy_step(self, trainer, optimizer, W, b, X, Y, w):
        """One batch with scikit-learn's NumPy back-propagation and update rules, on the
        kernel's parameters and optimizer state (``coefs_`` are views of ``W`` here)."""
        L = len(W)
        activations = [X] + [None] * L
        deltas = [None] * L
        coef_grads, intercept_grads = [None] * L, [None] * L
        loss, coef_grads, intercept_grads = self._backprop(
            X, Y, w, activations, deltas, coef_grads, intercept_grads
        )
        grads = [g.T for g in coef_grads] + list(intercept_grads)
        params = W + b
        state = trainer.state
        if isinstance(optimizer, AdamOptimizer):
            optimizer.t += 1
            b1, b2 = optimizer.beta_1, optimizer.beta_2
            lr = (optimizer.learning_rate_init * np.sqrt(1 - b2**optimizer.t)
                  / (1 - b1**optimizer.t))
            optimizer.learning_rate = lr
            for p, m, v, g in zip(params, state[:2 * L], state[2 * L:], grads):
                m[...] = b1 * m + (1 - b1) * g
                v[...] = b2 * v + (1 - b2) * (g**2)
                p += -lr * m / (np.sqrt(v) + optimizer.epsilon)
        elif not state:  # plain SGD, no velocities kept
            for p, g in zip(params, grads):
                p -= optimizer.learning_rate * g
        else:
            mu, lr = optimizer.momentum, optimizer.learning_rate
            for p, v, g in zip(params, state, grads):
                v[...] = mu * v - lr * g
                p += mu * v - lr * g if optimizer.nesterov else v
        return loss

    @staticmethod
    def _load_optimizer_state(optimizer, state, L):
        """Copy scikit-learn's velocities (or Adam moments) into the kernel's state."""
        if not state:
            return
        if isinstance(optimizer, AdamOptimizer):
            held = list(optimizer.ms) + list(optimizer.vs)
        else:
            held = list(optimizer.velocities)
        for k, (dst, src) in enumerate(zip(state, held)):
            src = np.asarray(src)
            dst[...] = src.T if k % (2 * L) < L else src

    @staticmethod
    def _save_optimizer_state(optimizer, state, L):
        """The kernel's optimizer state back into scikit-learn's optimizer object."""
        if not state:
            return
        arrays = [np.ascontiguousarray(s.T) if k % (2 * L) < L else s.copy()
                  for k, s in enumerate(state)]
        if isinstance(optimizer, AdamOptimizer):
            optimizer.ms, optimizer.vs = arrays[:2 * L], arrays[2 * L:]
        else:
            optimizer.velocities = arrays

    # -- lbfgs ----------------------------------------------------------------------------

    def _fit_lbfgs(self, X, y, sample_weight, activations, deltas, coef_grads,
                   intercept_grads, layer_units):
        spec = self._kernel_spec(y)
        if spec is None or not self._network_fits(layer_units) or (
                sample_weight is not None
                and not np.sum(sample_weight, dtype=np.float64) > 0):
            return super()._fit_lbfgs(
                X, y, sample_weight, activations, deltas, coef_grads, intercept_grads,
                layer_units,
            )
        names, loss, loss_scale = spec

        # scikit-learn's packing: all coefs_ (n_in, n_out) raveled, then all intercepts_
        self._coef_indptr = []
        self._intercept_indptr = []
        start = 0
        for i in range(self.n_layers_ - 1):
            n_fan_in, n_fan_out = layer_units[i], layer_units[i + 1]
            end = start + n_fan_in * n_fan_out
            self._coef_indptr.append((start, end, (n_fan_in, n_fan_out)))
            start = end
        for i in range(self.n_layers_ - 1):
            end = start + layer_units[i + 1]
            self._intercept_indptr.append((start, end))
            start = end
        packed = np.hstack([np.ravel(p) for p in self.coefs_ + self.intercepts_])

        # scipy hands fun x in x0's dtype; scikit-learn's products of X with it promote
        dtype = np.result_type(X.dtype, packed.dtype)
        Xk = _dense(X, dtype)
        Yk = np.ascontiguousarray(y, dtype=dtype)
        wk = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype)
        W = [np.empty(shape[::-1], dtype) for _, _, shape in self._coef_indptr]
        b = [np.empty(e - s, dtype) for s, e in self._intercept_indptr]
        trainer = engine.Trainer(W, b, names, Xk.shape[0], loss, "sgd", Xk.shape[1])
        dW, db = trainer.gradients
        alpha = float(self.alpha)

        def loss_grad(x):
            for (s, e, shape), w in zip(self._coef_indptr, W):
                w[...] = x[s:e].reshape(shape).T
            for (s, e), v in zip(self._intercept_indptr, b):
                v[...] = x[s:e]
            loss = trainer.gradient(Xk, Yk, wk, alpha, loss_scale)
            grad = np.empty(start, dtype)
            for (s, e, shape), g in zip(self._coef_indptr, dW):
                grad[s:e].reshape(shape)[...] = g.T
            for (s, e), g in zip(self._intercept_indptr, db):
                grad[s:e] = g
            return dtype.type(loss), grad

        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        opt_res = scipy.optimize.minimize(
            loss_grad,
            packed,
            method="L-BFGS-B",
            jac=True,
            options={
                "maxfun": self.max_fun,
                "maxiter": self.max_iter,
                "gtol": self.tol,
                **_get_additional_lbfgs_options_dict("iprint", iprint),
            },
        )
        self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        self.loss_ = opt_res.fun
        self._unpack(opt_res.x)


def _optimizer_name(optimizer):
    """bpfast's name for the steps of scikit-learn's optimizer object. Without momentum
    the velocities never enter an update: plain SGD."""
    if isinstance(optimizer, AdamOptimizer):
        return "adam"
    if optimizer.momentum == 0:
        return "sgd"
    return "nesterov" if optimizer.nesterov else "momentum"


def _write_back(original, trained):
    """``trained`` copied into ``original`` in place when it is a writable array of that
    shape (scikit-learn updates its parameter arrays in place), else a C-contiguous copy."""
    if (isinstance(original, np.ndarray) and original.shape == trained.shape
            and original.flags.writeable):
        original[...] = trained
        return original
    return np.ascontiguousarray(trained)


class MLPClassifier(_CompiledTraining, _SkMLPClassifier):
    """Multi-layer perceptron classifier: scikit-learn's ``MLPClassifier`` trained by
    bpfast's compiled kernels, with class weights.

    The same parameters, defaults, methods, attributes, warnings and errors as
    ``sklearn.neural_network.MLPClassifier`` (see its documentation); this class
    subclasses it and replaces only the training loops (see :mod:`bpfast.sklearn`).
    Sparse ``X`` is densified one chunk of batches at a time for sgd and adam, whole
    for lbfgs.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, \
learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, \
momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, \
epsilon, n_iter_no_change, max_fun
        As in ``sklearn.neural_network.MLPClassifier``.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, with scikit-learn's meaning (as in
        ``LogisticRegression``): a dict ``{label: weight}`` (classes not in it weigh 1),
        or ``"balanced"`` for ``n_samples / (n_classes * np.bincount(y))`` computed on
        the ``y`` given to ``fit``. Training with it equals training with
        ``sample_weight=sklearn.utils.class_weight.compute_sample_weight(class_weight,
        y)``, multiplied with the ``sample_weight`` passed to ``fit`` if any. ``None``
        weighs every class 1 (scikit-learn's behaviour). ``partial_fit`` accepts a dict,
        applied to each call's ``y``, and refuses ``"balanced"`` (as
        ``SGDClassifier`` does): a batch's class frequencies are not the data's.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from bpfast.sklearn import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier((64,), solver="sgd", random_state=0).fit(X / 16, y)
    >>> clf.score(X / 16, y) > 0.9
    True
    >>> weighted = MLPClassifier((64,), class_weight="balanced", random_state=0)
    """

    _parameter_constraints: dict = {
        **_SkMLPClassifier._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        class_weight: dict | str | None = None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
        )
        self.class_weight = class_weight

    def _fit(self, X, y, sample_weight=None, incremental=False):
        if self.class_weight is not None:
            sample_weight = self._weights_with_classes(X, y, sample_weight, incremental)
        return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)

    def _weights_with_classes(self, X, y, sample_weight, incremental):
        """``sample_weight`` (or ones) times the weights of the classes of ``y``."""
        if incremental and self.class_weight == "balanced":
            raise ValueError(
                "class_weight 'balanced' is not supported for partial_fit. In order to "
                "use 'balanced' weights, use compute_class_weight('balanced', "
                "classes=classes, y=y). In place of y you can use a large enough sample "
                "of the full training set target to properly estimate the class "
                "frequency distributions. Pass the resulting weights as the "
                "class_weight parameter."
            )
        weights = compute_sample_weight(self.class_weight, y)
        if sample_weight is not None:
            weights = weights * _check_sample_weight(sample_weight, X, dtype=np.float64)
        return weights


class MLPRegressor(_CompiledTraining, _SkMLPRegressor):
    """Multi-layer perceptron regressor: scikit-learn's ``MLPRegressor`` trained by
    bpfast's compiled kernels.

    The same parameters (``loss`` ``"squared_error"`` or ``"poisson"``), defaults, methods,
    attributes, warnings and errors as ``sklearn.neural_network.MLPRegressor`` (see its
    documentation); this class subclasses it and replaces only the training loops (see
    :mod:`bpfast.sklearn`). Sparse ``X`` is densified one chunk of batches at a time for
    sgd and adam, whole for lbfgs.
    """
