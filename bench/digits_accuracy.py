"""Digits accuracy of Network.fit(X, labels) then predict on a held-out quarter.

    python bench/digits_accuracy.py
"""
import numpy as np
import bpfast
from bpfast.datasets import load_digits

X, y = load_digits()
X = X / 16.0
order = np.random.default_rng(0).permutation(len(y))
train, test = order[:1347], order[1347:]          # 1347 training rows, 450 held out
net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
history = net.fit(X[train], y[train], loss="cross_entropy", optimizer="adam",
                  learning_rate=0.001, batch_size=32, epochs=30, metrics=["accuracy"])
print("classes_", net.classes_)
print(f"train accuracy (last epoch) {history.metrics['accuracy'][-1]:.4f}")
print(f"held-out accuracy {np.mean(net.predict(X[test]) == y[test]):.4f} on {len(test)} images")
