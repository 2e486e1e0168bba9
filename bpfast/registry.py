"""The one table of names bpfast accepts and the integer codes the compiled core reads.

Activations, losses and optimizers are chosen by name in the public API and passed to the
compiled core as small integers. Every module takes both from here, so a name and its code
are written once; ``tests/test_registry.py`` holds :data:`KERNEL_ENUM` against the
``cdef enum`` blocks of the Cython sources, so the two sides cannot drift apart.
"""
from typing import NamedTuple

__all__ = [
    "ACTIVATIONS", "ACTIVATION_CODES", "ALIASES", "OUTPUT_ONLY", "LOSSES", "OPTIMIZERS",
    "CLASSIFICATION_LOSSES", "KERNEL_ENUM", "SKLEARN_ACTIVATIONS", "SKLEARN_LOSSES",
    "Loss", "Optimizer",
]

#: Canonical activation names, in the order of the compiled core's codes (the position
#: of a name is its code).
ACTIVATIONS = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "silu", "softmax", "exp",
)

#: Activation name -> the compiled core's code.
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

#: Other accepted spellings of activations, mapped to their canonical name.
ALIASES = {"logistic": "sigmoid", "linear": "identity", "swish": "silu"}

#: Activations that act on a whole output row, allowed only on the last layer.
OUTPUT_ONLY = ("softmax",)


class Loss(NamedTuple):
    """A loss as the compiled core knows it."""

    #: the compiled core's loss code
    code: int
    #: the output activation the loss must be paired with (its canonical link), or None
    output: str | None


class Optimizer(NamedTuple):
    """An optimizer as the compiled core runs it: momentum and Nesterov are the SGD
    kernel with a velocity."""

    #: the compiled core's optimizer code
    code: int
    #: whether the step keeps a velocity per parameter
    velocity: bool
    #: whether the velocity step looks ahead (Nesterov)
    nesterov: bool


#: The compiled core's enum members (``_activation_math.pxd``'s activations, the loss and
#: optimizer codes of the trainer) and their values: what the test checks the Cython
#: sources against, and what the tables below take their codes from.
KERNEL_ENUM = {
    **{name.upper(): code for name, code in ACTIVATION_CODES.items()},
    "LOSS_MSE": 0, "LOSS_CE": 1, "LOSS_BCE": 2, "LOSS_POISSON": 3,
    "OPT_SGD": 0, "OPT_ADAM": 1,
}

#: Loss name -> its code and required output activation.
LOSSES = {
    "mse": Loss(KERNEL_ENUM["LOSS_MSE"], None),
    "cross_entropy": Loss(KERNEL_ENUM["LOSS_CE"], "softmax"),
    "binary_cross_entropy": Loss(KERNEL_ENUM["LOSS_BCE"], "sigmoid"),
    "poisson": Loss(KERNEL_ENUM["LOSS_POISSON"], "exp"),
}

#: Losses whose targets may be given as class labels.
CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")

#: Optimizer name -> its code and the kind of step.
OPTIMIZERS = {
    "sgd": Optimizer(KERNEL_ENUM["OPT_SGD"], False, False),
    "momentum": Optimizer(KERNEL_ENUM["OPT_SGD"], True, False),
    "nesterov": Optimizer(KERNEL_ENUM["OPT_SGD"], True, True),
    "adam": Optimizer(KERNEL_ENUM["OPT_ADAM"], False, False),
}

#: scikit-learn's activation names that bpfast computes -> bpfast's names.
SKLEARN_ACTIVATIONS = {
    "identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
    "softmax": "softmax", "exp": "exp",
}

#: (scikit-learn loss, scikit-learn output activation) -> bpfast's loss. These are the
#: pairs for which scikit-learn's output delta ``A - Y`` is the true gradient, as in the
#: compiled core.
SKLEARN_LOSSES = {
    ("squared_error", "identity"): "mse",
    ("log_loss", "softmax"): "cross_entropy",
    ("log_loss", "logistic"): "binary_cross_entropy",
    ("poisson", "exp"): "poisson",
}
