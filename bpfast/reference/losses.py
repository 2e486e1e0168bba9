"""Loss and gradient of one batch for every loss, with sample weights and the L2 penalty:
what one step of :func:`bpfast.reference.fit` descends."""
import numpy as np

from .._losses import loss_value
from .._typing import Gradient
from .backprop import _apply_derivative, _backward, _forward_columns

__all__ = ["loss_value", "loss_gradient"]


def loss_gradient(weights: list[np.ndarray], biases: list[np.ndarray], names: list[str],
                  X: np.ndarray, Y: np.ndarray, loss: str = "mse",
                  sample_weight: np.ndarray | None = None, l2: float = 0.0) -> Gradient:
    """Loss and gradient of one batch, in column notation (samples as columns).

    With weights ``w_c`` (all 1 when ``sample_weight`` is None) and ``s = sum_c w_c``:

    - ``mse``: ``E = 1/(2s) sum_c w_c sum_i (A^L_ic - Y_ic)^2`` (the squared error E when
      unweighted), ``dA^L = w (A^L - Y) / s``, then ``dZ^L = dA^L (.) g'(Z^L)``;
    - ``cross_entropy`` (softmax output): ``E = -1/s sum_c w_c sum_i Y_ic log A^L_ic``;
    - ``binary_cross_entropy`` (sigmoid output):
      ``E = -1/s sum_c w_c sum_i [Y log A^L + (1 - Y) log(1 - A^L)]_ic``;

    - ``poisson`` (exp output): ``E = 1/s sum_c w_c sum_i [Y log(Y / A^L) - Y + A^L]_ic``
      (half the Poisson deviance, ``0 log 0 = 0``);

    for the last three the output delta is ``dZ^L = w (A^L - Y) / s``. For the two
    cross-entropies ``A^L`` is clipped to ``P`` in ``[eps, 1 - eps]`` inside the logarithms
    (``log P`` and ``log(1 - P)``), as scikit-learn does. The L2 penalty adds
    ``l2/(2s) sum_l ||W^l||^2`` to E and ``l2/s W^l`` to ``dW^l`` (biases are not penalised).

    Parameters are already checked arrays; ``names`` canonical activation names.
    """
    m = X.shape[0]
    Zs, As = _forward_columns(weights, biases, names, X.T)
    AL, Yc = As[-1], Y.T
    w = np.ones(m, dtype=X.dtype) if sample_weight is None else sample_weight
    s = X.dtype.type(w.sum()) if sample_weight is not None else m
    E = loss_value(AL, Yc, loss, w, s, np.finfo(X.dtype).eps)
    if loss == "mse":
        dZ = _apply_derivative(names[-1], w * (AL - Yc) / s, Zs[-1], AL)
    else:
        dZ = w * (AL - Yc) / s
    dW, db = _backward(weights, names, Zs, As, dZ)
    if l2:
        E += float(0.5 * l2 * sum(np.sum(W * W) for W in weights) / s)
        dW = [g + (l2 / s) * W for g, W in zip(dW, weights)]
    return E, dW, db
