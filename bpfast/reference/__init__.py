"""The pure-NumPy baseline: the derivation of docs/math.md, formula for formula.

This package is the test oracle and the slow trainer every benchmark compares against. It
imports nothing from the compiled side. It works in the derivation's notation, one sample
per *column*: ``A^0 = X.T`` (a view of the same memory, see docs/math.md), and for
``l = 1..L``::

    Z^l = W^l A^(l-1) + b^l [1 ... 1]          A^l = g^l(Z^l)
    E   = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2

    dA^L     = (A^L - Y) / m
    dZ^l     = dA^l (.) g^l'(Z^l)
    dW^l     = dZ^l (A^(l-1))^T
    db^l     = dZ^l [1 ... 1]^T
    dA^(l-1) = (W^l)^T dZ^l

The public functions take and return the NumPy layout (one sample per row) like the rest of
bpfast, so that the two can be compared directly.
"""
from .activations import ACTIVATIONS
from .backprop import backprop, forward, loss
from .fit import fit
from .losses import loss_gradient, loss_value

__all__ = ["ACTIVATIONS", "forward", "backprop", "loss", "loss_gradient", "loss_value", "fit"]
