"""scikit-learn's ``MLPRegressor`` and ``MLPClassifier`` on bpfast's compiled kernels.

>>> from bpfast.sklearn import MLPClassifier        # instead of sklearn.neural_network
>>> clf = MLPClassifier(hidden_layer_sizes=(64,), solver="sgd", random_state=0)

Both classes subclass scikit-learn's own estimators (``sklearn.neural_network``) and
replace only the two training loops:

* ``solver="sgd"`` / ``"adam"``: every epoch is one call of the engine's
  ``Trainer.epoch`` (:class:`bpfast.engine.Trainer`; all batches in compiled code: forward, back-propagation, L2 penalty and the
  optimizer step, without the GIL). Python runs once per epoch what scikit-learn runs once
  per epoch: the shuffle (the same ``sklearn.utils.shuffle`` calls on the same random
  state, passed to the kernel as the row ``order``), the learning-rate schedule
  (scikit-learn's own ``SGDOptimizer`` / ``AdamOptimizer`` objects hold the schedule and,
  between ``partial_fit`` calls, the velocities or moments), the loss curve, early
  stopping and the warnings.
* ``solver="lbfgs"``: ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` with
  scikit-learn's options, each loss-and-gradient evaluation one compiled full-batch
  ``Trainer.gradient`` call.

Everything else -- parameters and their validation, initialisation, input checks, label
handling, prediction, scoring, tags, ``get_params`` / ``set_params`` / ``clone`` /
``repr``, attributes, warnings and errors -- is scikit-learn's code, so the estimators
are drop-in replacements; with the same ``random_state`` they follow scikit-learn's
training trajectory to rounding.

Differences worth knowing:

* Sparse ``X`` (the kernels are dense): sgd and adam densify one chunk of whole batches
  at a time (at most 32 MiB, or one batch if that is larger), so memory is the sparse
  matrix's plus one chunk; lbfgs, a full-batch method, densifies the whole ``X`` once
  per fit. The products are dense, so very sparse, wide data trains slower than in
  scikit-learn, whose products are sparse. Prediction accepts sparse input as in
  scikit-learn.
* Training runs in one dtype: ``X``'s (float32 stays float32), or float64 when the
  parameters are float64 while ``X`` is float32 (scikit-learn computes in float64 there
  too; e.g. a warm start after an lbfgs fit, which leaves float64 coefficients).
* Rare cases outside the kernels fall back to scikit-learn's NumPy code, with identical
  results: a batch whose loss is NaN or infinite (the kernel stops before the update; that
  batch runs in NumPy, then the kernel resumes), lbfgs with a non-positive sum of sample
  weights, and a regressor whose ``loss`` was changed before a warm start (output layer and
  loss then do not pair canonically).

Importing ``bpfast`` never imports scikit-learn; importing ``bpfast.sklearn`` does.
"""
from .integrations.sklearn import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
