"""Type aliases shared by the public signatures (for type checkers and the API docs)."""
from collections.abc import Sequence
from typing import Union

import numpy as np
from numpy.typing import ArrayLike

#: Weight matrices ``W^l`` or bias vectors ``b^l``, one per layer.
Params = Sequence[ArrayLike]
#: One activation name for every layer, or one per layer.
Activations = Union[str, Sequence[str]]
#: ``(E, dW, db)``: the error and its gradient, one array per layer.
Gradient = tuple[float, list[np.ndarray], list[np.ndarray]]

__all__ = ["ArrayLike", "Params", "Activations", "Gradient"]
