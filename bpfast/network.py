"""``Network``: a fully connected network that owns its parameters."""
import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import engine
from ._validation import check_dtype, check_positive_int
from .activations import resolve_activations

if TYPE_CHECKING:  # for the annotations only: these modules import this one
    from .callbacks import Callback
    from .schedules import Schedule
    from .training import History

__all__ = ["Network"]

#: What ``np.random.default_rng`` accepts as a seed.
SeedLike = Union[int, np.random.Generator, None]

#: Activations initialised Glorot-style; the others (relu-like) He-style.
_GLOROT = {"identity", "sigmoid", "tanh"}


def _init_layer(rng, n_out, n_in, name, dtype):
    """Weights for a layer whose output goes through ``name``; biases start at zero.

    Glorot uniform, ``U(-r, r)`` with ``r = sqrt(6 / (n_in + n_out))`` (scaled by 4 for
    sigmoid, as Glorot and Bengio advise), for identity, sigmoid and tanh; He normal,
    ``N(0, 2 / n_in)``, for relu, leaky_relu, softplus and silu.
    """
    if name in _GLOROT:
        r = np.sqrt(6.0 / (n_in + n_out))
        if name == "sigmoid":
            r *= 4.0
        W = rng.uniform(-r, r, size=(n_out, n_in))
    else:
        W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in))
    return W.astype(dtype, copy=False), np.zeros(n_out, dtype=dtype)


class Network:
    """A fully connected network ``n^0 -> n^1 -> ... -> n^L``.

    Parameters
    ----------
    sizes : sequence of int
        Layer sizes ``(n^0, ..., n^L)``, at least two.
    activations : str or sequence of str, default "sigmoid"
        One name for every layer or one per layer (``len(sizes) - 1`` names); see
        ``bpfast.ACTIVATIONS``.
    dtype : float32 or float64, default float64
        The dtype of the parameters and of every computation.
    seed : int, numpy.random.Generator or None
        Seeds the initialisation, and the shuffling of :meth:`fit` unless ``fit`` is
        given its own ``seed``: two networks built with the same integer seed and fitted
        alike train identically, bit for bit.

    Attributes
    ----------
    weights : list of ndarray
        ``weights[l-1]`` is ``W^l`` of shape ``(n^l, n^(l-1))``. The network computes with
        these very arrays: writing into them in place changes the network.
    biases : list of ndarray
        ``biases[l-1]`` is ``b^l`` of shape ``(n^l,)``; likewise shared.
    seed : int, numpy.random.Generator or None
        The ``seed`` given, kept for :meth:`fit`'s shuffling.
    classes_ : ndarray or None
        The sorted class labels when the last :meth:`fit` was given class labels (see
        :meth:`fit`), else None. Saved with the model.
    """

    def __init__(self, sizes, activations="sigmoid", dtype=np.float64, seed=None):
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(
                f"sizes: expected a sequence of layer sizes, got {type(sizes).__name__}"
            ) from None
        if len(sizes) < 2:
            raise ValueError(
                f"sizes: expected at least two sizes (inputs and outputs), got {len(sizes)}"
            )
        self.sizes = tuple(check_positive_int(n, f"sizes[{i}]") for i, n in enumerate(sizes))
        self.activations = resolve_activations(activations, len(sizes) - 1)
        self.dtype = check_dtype(dtype)
        #: The loss the network was last trained with (saved with the model).
        self.loss_function = "mse"
        self.seed = seed
        self.classes_ = None
        rng = np.random.default_rng(seed)
        self.weights, self.biases = [], []
        for n_in, n_out, name in zip(self.sizes[:-1], self.sizes[1:], self.activations):
            W, b = _init_layer(rng, n_out, n_in, name, self.dtype)
            self.weights.append(W)
            self.biases.append(b)

    @property
    def n_layers(self):
        """Number of layers ``L`` (weight matrices)."""
        return len(self.sizes) - 1

    @property
    def n_parameters(self):
        """Total number of weights and biases."""
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases))

    def forward(self, X):
        """Outputs ``A^L`` of shape ``(m, n^L)`` for inputs ``X`` of shape ``(m, n^0)``."""
        return engine.forward(self.weights, self.biases, self.activations, X)

    def loss(self, X, Y):
        """The seed's error ``E = 1/(2m) sum (A^L - Y)^2`` on ``(X, Y)``."""
        return engine.loss(self.weights, self.biases, self.activations, X, Y)

    def gradient(self, X, Y):
        """``(E, dW, db)``: the error and its gradient, as :func:`bpfast.backprop`."""
        return engine.backprop(self.weights, self.biases, self.activations, X, Y)

    def fit(self, X: ArrayLike, Y: ArrayLike, *, epochs: int = 10, batch_size: int = 32,
            learning_rate: float = 0.1, optimizer: str = "sgd", loss: str = "mse",
            shuffle: bool = True, seed: SeedLike = None, momentum: float = 0.9,
            beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, l2: float = 0.0,
            sample_weight: Optional[ArrayLike] = None,
            validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None,
            early_stopping: bool = False, patience: int = 10, tol: float = 1e-4,
            restore_best: bool = True, callback: Optional[Callable] = None,
            progress: bool = False, metrics: Sequence[str] = (),
            callbacks: Sequence["Callback"] = (), validation_split: Optional[float] = None,
            lr_schedule: Union[str, Callable[[int], float], "Schedule", None] = None,
            class_weight: Union[dict, str, None] = None) -> "History":
        """Train the network in place by mini-batch gradient descent.

        Every epoch runs in compiled code, without the GIL and without allocating per
        batch. With ``optimizer="sgd", shuffle=False`` it is plain mini-batch gradient
        descent in data order: batches of ``batch_size`` rows (the last one smaller), each
        step ``W -= learning_rate * dW`` with ``dW`` the gradient of that batch's own loss
        (the seed's ``E`` over the batch's own ``m``), exactly as
        :func:`bpfast.reference.fit`.

        Parameters
        ----------
        X : array_like of shape (m, n^0)
        Y : array_like of shape (m, n^L) or (m,)
            Targets. A 2-D ``Y`` is taken as given. A 1-D ``Y`` is, under
            ``loss="cross_entropy"`` or ``"binary_cross_entropy"``, class labels
            (integers or strings): their sorted unique values become :attr:`classes_` and
            each label becomes a one-hot row (a 0/1 column for a 1-unit sigmoid output,
            which takes two classes); the network needs one output unit per class.
            Under another loss, a 1-D ``Y`` is one target per row for a 1-output network.
        epochs : int, default 10
        batch_size : int, default 32
        learning_rate : float, default 0.1
            The rate of the first epoch, and of all epochs without ``lr_schedule``.
        optimizer : {"sgd", "momentum", "nesterov", "adam"}, default "sgd"
            See :func:`bpfast.reference.fit` for the update rules.
        loss : {"mse", "cross_entropy", "binary_cross_entropy", "poisson"}, default "mse"
            "mse" is the seed's ``E``; "cross_entropy" needs a softmax output layer,
            "binary_cross_entropy" a sigmoid one and "poisson" an exp one (output gradient
            ``(A - Y)/m``); see :func:`bpfast.reference.loss_gradient`.
        shuffle : bool, default True
            Visit the rows in a new random order every epoch.
        seed : int, Generator or None
            Seeds the shuffling; None takes the network's own ``seed``.
        momentum : float in [0, 1), default 0.9
            For "momentum" and "nesterov".
        beta1, beta2, epsilon : float
            Adam's decay rates and denominator guard.
        l2 : float, default 0
            Adds ``l2/(2m) sum ||W^l||^2`` to each batch's loss (biases excluded).
        sample_weight : array_like of shape (m,), optional
            Per-row weights; each batch's loss becomes a weighted mean. A batch whose
            weights are all zero is skipped (no step; Adam's step count unchanged) and
            adds 0 to the epoch's loss; weights that are all zero are refused.
        validation_data : (X_val, Y_val), optional
            Evaluated after every epoch into ``history.val_loss`` (and the ``val_``
            metrics). ``Y_val`` may hold class labels, as ``Y``.
        early_stopping : bool, default False
            Stop when the validation loss (or, without validation data, the training
            loss) has not improved by more than ``tol`` for ``patience`` epochs; with
            ``restore_best`` the best epoch's parameters are put back. For another
            monitored value use :class:`bpfast.callbacks.EarlyStopping`.
        callback : callable, optional
            ``callback(net, epoch, history)`` after every epoch; returning False stops.
        progress : bool, default False
            Show a progress bar (tqdm) with epoch, loss and samples per second.
        metrics : sequence of str, default ()
            Names from :data:`bpfast.metrics.METRICS` ("accuracy", "mse", "mae", "r2")
            to record after every epoch in ``history.metrics``, on the training data
            (one forward pass over it per epoch) and, with validation data, as
            ``"val_" + name``. The loss is always recorded.
        callbacks : sequence of bpfast.callbacks.Callback, default ()
            E.g. :class:`~bpfast.callbacks.EarlyStopping`,
            :class:`~bpfast.callbacks.ModelCheckpoint`,
            :class:`~bpfast.callbacks.CSVLogger`,
            :class:`~bpfast.callbacks.ReduceLROnPlateau`; called after every epoch,
            after ``callback``.
        validation_split : float in (0, 1), optional
            Hold out the last ``validation_split`` fraction of the rows (as Keras does:
            the rows at the end, in data order, before any shuffling) as validation data,
            evaluated like ``validation_data`` (unweighted). Not together with
            ``validation_data``.
        lr_schedule : str, callable or bpfast.schedules.Schedule, optional
            The learning rate of each epoch: "constant", "invscaling", "step" or
            "cosine" (the :mod:`bpfast.schedules` classes with their default
            parameters), a schedule object, or a callable ``epoch -> rate`` (0-based
            epochs). Applied between epochs; ``history.learning_rate`` records it.
        class_weight : dict or "balanced", optional
            Needs class labels in ``Y``. Each row's weight is multiplied by its class's
            weight (a dict ``label -> weight``, missing classes 1; "balanced" is
            scikit-learn's ``n_samples / (n_classes * bincount(y))`` over the training
            rows), exactly as passing that ``sample_weight``.

        Returns
        -------
        History
            Per-epoch ``loss``, ``val_loss``, ``metrics``, ``learning_rate`` and ``time``.

        Raises
        ------
        DivergenceError
            When a batch's outputs or loss are NaN or infinite, or its update would
            overflow a parameter (or an entry of momentum's or Adam's state), for every
            loss and optimizer. The network keeps its parameters from just before that
            batch: the last finite weights.
        KeyboardInterrupt
            On Ctrl-C (SIGINT) in the main thread, at a batch boundary within about
            50 ms (plus the batch running): the network keeps the parameters of the
            last batch done, and the exception's ``history`` attribute holds the
            finished epochs.
        """
        from .training import fit

        if seed is None:
            seed = self.seed
        return fit(self, X, Y, epochs=epochs, batch_size=batch_size,
                   learning_rate=learning_rate, optimizer=optimizer, loss=loss,
                   shuffle=shuffle, seed=seed, momentum=momentum, beta1=beta1, beta2=beta2,
                   epsilon=epsilon, l2=l2, sample_weight=sample_weight,
                   validation_data=validation_data, early_stopping=early_stopping,
                   patience=patience, tol=tol, restore_best=restore_best,
                   callback=callback, progress=progress, metrics=metrics,
                   callbacks=callbacks, validation_split=validation_split,
                   lr_schedule=lr_schedule, class_weight=class_weight)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities for the rows of ``X``.

        A softmax output's rows; for a 1-unit sigmoid output, the columns ``[1 - p, p]``
        (the probabilities of ``classes_[0]`` and ``classes_[1]``); for a sigmoid output
        of several units, each unit's probability.

        Raises
        ------
        ValueError
            When the output layer is neither softmax nor sigmoid.
        """
        out = self.activations[-1]
        if out not in ("softmax", "sigmoid"):
            raise ValueError(
                f"predict_proba: the network's output activation is {out!r}, whose outputs "
                "are not probabilities; it needs a softmax or sigmoid output layer"
            )
        A = self.forward(X)
        if out == "sigmoid" and A.shape[1] == 1:
            return np.hstack([1 - A, A])
        return A

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predictions for the rows of ``X``.

        After a fit on class labels (``classes_`` set): a label per row, the class of the
        largest output (for a 1-unit sigmoid output, ``classes_[1]`` where ``p > 0.5``).
        Otherwise the outputs ``forward(X)`` of shape ``(m, n^L)``.
        """
        if self.classes_ is None:
            return self.forward(X)
        A = self.forward(X)
        if A.shape[1] == 1:
            return self.classes_[(A[:, 0] > 0.5).astype(np.intp)]
        return self.classes_[np.argmax(A, axis=1)]

    def to_onnx(self, path: Union[str, "os.PathLike"]) -> str:
        """Export the network as an ONNX model file; see :func:`bpfast.onnx.to_onnx`."""
        from .onnx import to_onnx

        return to_onnx(self, path)

    def save(self, path: "str | os.PathLike[str]") -> str:
        """Write the network to a portable ``.npz`` file (see :mod:`bpfast.io`).

        Parameters
        ----------
        path : str or os.PathLike
            The target; an existing file is replaced atomically.

        Returns
        -------
        str
            ``path``.

        Raises
        ------
        TypeError, ValueError
            When :func:`bpfast.load` would refuse the file: a parameter replaced by one
            of another dtype or byte order, shape, or with NaN or infinite values, an
            added or removed layer, an unknown activation or loss. The message names the
            parameter (e.g. ``weights[1]``) with what was expected and what came; nothing
            is written and a file at ``path`` stays as it was.
        """
        from .io import save

        return save(self, path)

    def __repr__(self):
        arch = "-".join(str(n) for n in self.sizes)
        acts = set(self.activations)
        act = repr(self.activations[0]) if len(acts) == 1 else repr(list(self.activations))
        return (
            f"Network({arch}, activations={act}, dtype={self.dtype.name}, "
            f"parameters={self.n_parameters})"
        )
