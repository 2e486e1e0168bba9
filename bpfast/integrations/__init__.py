"""bpfast inside other libraries: the scikit-learn estimators (``sklearn``) and training
on Dask (``dask``, with the tasks its workers run in ``_dask_tasks``).

They are built on the engine (:class:`bpfast.engine.Trainer`,
:func:`bpfast.engine.backprop_arrays`), never on the compiled core. Import them by their
public paths, :mod:`bpfast.sklearn` and :mod:`bpfast.distributed`; this package imports
neither scikit-learn nor Dask itself.
"""
