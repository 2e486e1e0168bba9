"""The compiled core: ``kernels`` (forward pass, back-propagation, training epochs) and
``shuffle`` (scikit-learn's per-epoch shuffle). Only bpfast's engine and its
integrations import them."""
