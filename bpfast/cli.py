"""The ``bpfast`` command line (``bpfast --help``)."""
import argparse
import sys
import time

import numpy as np


def _check(args):
    """Compute a gradient with the compiled kernels and check it three ways."""
    import bpfast
    from bpfast import reference

    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split("-")]
    net = bpfast.Network(sizes, activations=args.activation, seed=args.seed)
    X = rng.normal(size=(args.samples, sizes[0]))
    Y = rng.uniform(size=(args.samples, sizes[-1]))
    print(f"bpfast {bpfast.__version__}: {net}, m = {args.samples}")

    t0 = time.perf_counter()
    E, dW, db = net.gradient(X, Y)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    E_ref, dW_ref, db_ref = reference.backprop(net.weights, net.biases, net.activations, X, Y)
    t_ref = time.perf_counter() - t0
    diff = max(
        float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300))
        for g, r in zip(dW + db, dW_ref + db_ref)
    )
    print(f"E = {E:.12g} (reference {E_ref:.12g})")
    print(f"compiled vs NumPy reference: largest relative difference {diff:.2e}")
    print(f"time: compiled {t_fast * 1e3:.2f} ms, reference {t_ref * 1e3:.2f} ms")

    small = bpfast.Network([sizes[0], 5, sizes[-1]], activations=args.activation, seed=1)
    fd = bpfast.check_gradient(small.weights, small.biases, small.activations, X[:20], Y[:20])
    print(f"finite differences on {small}: relative difference {fd:.2e}")
    ok = diff < 1e-8 and fd < 1e-5
    print("gradient check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


def build_parser():
    import bpfast

    parser = argparse.ArgumentParser(
        prog="bpfast", description="Fast, exact back-propagation for fully connected networks."
    )
    parser.add_argument("--version", action="version", version=f"bpfast {bpfast.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="compute a gradient and check it against the NumPy reference and finite differences",
        description=_check.__doc__,
    )
    check.add_argument("--sizes", default="64-32-10", help="layer sizes, e.g. 64-32-10")
    check.add_argument("--activation", default="sigmoid", help="activation of every layer")
    check.add_argument("--samples", type=int, default=256, help="number of samples m")
    check.add_argument("--seed", type=int, default=0, help="random seed")
    check.set_defaults(run=_check)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError) as err:
        print(f"bpfast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
