"""bpfast.benchmarks: flop counts, the table, and a tiny run of the machinery.

No timing is asserted: only that the numbers are there, positive, and that the peers
computed the same thing as bpfast. Peers that are not installed are skipped.
"""
import argparse
import json
import os

import numpy as np
import pytest

from bpfast import benchmarks as bm
from bpfast.benchmarks import Case

TOY = Case("toy", "epoch", (5, 4, 3), ("sigmoid", "sigmoid"), 23, 4, "float64")


# --------------------------------------------------------------------------------------
# work per case
# --------------------------------------------------------------------------------------

def test_forward_flops():
    assert bm.forward_flops((64, 32, 10), 1) == 2 * (64 * 32 + 32 * 10)
    assert bm.forward_flops((784, 1024, 1024, 10), 8192) == \
        2 * 8192 * (784 * 1024 + 1024 * 1024 + 1024 * 10)


def test_backward_flops_skip_dA0():
    # dW for every layer, dA only for layers 2..L (no dA^0)
    assert bm.backward_flops((64, 32, 10), 1) == 2 * (64 * 32 + 32 * 10) + 2 * (32 * 10)
    assert bm.backward_flops((7, 3), 5) == 2 * 5 * 21  # one layer: dW only
    sizes, m = (784, 1024, 1024, 10), 256
    prods = [784 * 1024, 1024 * 1024, 1024 * 10]
    assert bm.backward_flops(sizes, m) == 2 * m * sum(prods) + 2 * m * (prods[1] + prods[2])


def test_case_flops_by_task():
    f, b = bm.forward_flops(TOY.sizes, 23), bm.backward_flops(TOY.sizes, 23)
    assert TOY.flops == f + b  # an epoch's batches add up to all rows
    assert Case("toy", "forward", TOY.sizes, TOY.activations, 23, 23, "float64").flops == f
    assert Case("toy", "backprop", TOY.sizes, TOY.activations, 23, 23, "float64").flops == f + b


def test_default_cases():
    cases = bm.default_cases()
    assert len(cases) == 12
    labels = [(c.label, c.dtype) for c in cases]
    assert labels[:6] == [(l, "float64") for l in
                          ("S1", "S32", "M", "L", "L forward", "M backprop")]
    L = next(c for c in cases if c.label == "L")
    assert (L.sizes, L.activations, L.rows, L.batch) == (
        (784, 1024, 1024, 10), ("relu", "relu", "sigmoid"), 8192, 256)
    M = next(c for c in cases if c.label == "M")
    assert (M.activations, M.rows, M.batch) == (("tanh", "sigmoid"), 10000, 64)
    assert next(c for c in cases if c.label == "M backprop").rows == 10000


def test_quick_caps_only_the_large_cases():
    quick = {(c.label, c.dtype): c for c in bm.default_cases(quick=True)}
    assert quick["S1", "float64"].rows == 1797 and quick["S32", "float32"].rows == 1797
    assert quick["L", "float64"].rows == bm.QUICK_ROWS
    assert quick["L forward", "float32"].rows == bm.QUICK_ROWS
    assert quick["M backprop", "float64"].batch == bm.QUICK_ROWS


def test_case_selection():
    cases = bm.default_cases(names=["S32", "forward"], dtypes=("float32",))
    assert [(c.label, c.dtype) for c in cases] == [("S32", "float32"), ("L forward", "float32")]


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------

def fake_report():
    entry = {
        "case": "S1", "task": "epoch", "label": "S1", "sizes": [64, 32, 10],
        "activations": ["sigmoid", "sigmoid"], "rows": 1797, "batch": 1, "dtype": "float64",
        "flops": 1.0e8, "times": {"bpfast": {"median": 0.0021, "repeats": [0.0021],
                                             "warmup": 0.003, "min": 0.0020,
                                             "max": 0.0023}},
        "ratios": {"reference": 41.234, "sklearn": 150.6}, "agreement":
            {"reference": 2.5e-15, "sklearn": None},
        "unsupported": [], "gflops": 47.6, "fraction_of_gemm": 0.4,
    }
    bp = dict(entry, case="M", task="backprop", label="M backprop", sizes=[784, 128, 10],
              activations=["tanh", "sigmoid"], rows=10000, batch=10000,
              times={"bpfast": {"median": 1.5, "repeats": [1.5], "warmup": 1.6}},
              ratios={"reference": 0.987}, agreement={"reference": 1e-14},
              unsupported=["sklearn"], fraction_of_gemm=None)
    return {
        "bpfast": "0.1.0", "quick": False, "learning_rate": 0.01,
        "machine": {"cpu": "Test CPU 9000", "cores": 2, "threads": 2,
                    "pools": [{"user_api": "blas", "internal_api": "openblas",
                               "version": "0.3.0", "num_threads": 2}]},
        "versions": {"numpy": "2.0", "scipy": "1.11", "scikit-learn": "1.6"},
        "peers": {"reference": {"available": True, "version": "x"},
                  "torch": {"available": False, "reason": "not installed (torch)"},
                  "jax": {"available": False, "reason": "not installed (jax)"},
                  "sklearn": {"available": True, "version": "1.6"}},
        "gemm": {"float64": {"seconds": 0.2, "gflops": 119.0, "n": 2048}},
        "results": [entry, bp],
    }


def test_format_table():
    text = bm.format_table(fake_report())
    lines = text.splitlines()
    assert "Test CPU 9000" in text and "threads: 2" in text and "openblas 0.3.0" in text
    assert "numpy 2.0" in text and "scikit-learn 1.6" in text
    assert "float64 119.0 GFLOP/s" in text
    header = next(l for l in lines if l.startswith("case "))
    for col in ("dtype", "bpfast", "range", "GFLOP/s", "of GEMM", "reference", "torch", "jax",
                "sklearn*"):
        assert col in header
    s1 = next(l for l in lines if l.startswith("S1 "))
    assert s1.split() == ["S1", "float64", "2.1", "ms", "-5%/+10%", "47.6", "40%", "41.2x",
                          "n/i", "n/i", "151x"]
    bp = next(l for l in lines if l.startswith("M backprop"))
    assert bp.split() == ["M", "backprop", "float64", "1.50", "s", "-", "47.6", "-",
                          "0.987x", "n/i", "n/i", "n/a"]
    # the legend, the agreement line and the notes
    assert any("64-32-10 sigmoid/sigmoid, 1,797 rows, batch 1" in l for l in lines)
    assert "reference 1.0e-14" in text  # the worst over the float64 cases
    assert "not installed: torch" in text
    # columns line up: every row of the table is as wide as the header or narrower
    table = lines[lines.index(header):lines.index(header) + 4]
    assert len({l.index("float64") for l in table[2:]}) == 1


def test_time_and_ratio_formats():
    assert bm._ms(0.0021) == "2.1 ms" and bm._ms(0.25) == "250 ms"
    assert bm._ms(1.234) == "1.23 s" and bm._ms(12.34) == "12.3 s"
    assert bm._ratio(1.0) == "1x" and bm._ratio(12.345) == "12.3x" and bm._ratio(234.5) == "234x"
    assert bm._ratio(None) == "-"


def test_time_runners_blocks_and_counts():
    calls = []

    def make(name):
        return bm.Runner(lambda: calls.append(name), reset=lambda: calls.append("reset"),
                         result=lambda: [np.zeros(1)])

    out = bm.time_runners({"a": make("a"), "b": make("b")}, budget=0.0, min_repeats=3,
                          max_repeats=5, settle=0)
    runs = [c for c in calls if c != "reset"]
    assert runs == ["a"] * 4 + ["b"] * 4  # one block each: a warm-up, then the repeats
    assert calls.count("reset") == len(runs)  # a reset before every run
    for name in "ab":
        t = out[name]
        assert len(t.times) == 3 and t.median >= 0 and t.warmup >= 0
        assert t.result[0].shape == (1,)


# --------------------------------------------------------------------------------------
# a tiny run of the whole machinery
# --------------------------------------------------------------------------------------

def test_smoke_run_toy_cases():
    cases = [
        TOY,
        Case("toy", "epoch", (5, 4, 3), ("tanh", "sigmoid"), 10, 3, "float32"),
        Case("toy", "forward", (5, 4, 4, 3), ("relu", "relu", "sigmoid"), 9, 9, "float64"),
        Case("toy", "backprop", (5, 4, 3), ("tanh", "sigmoid"), 9, 9, "float64"),
    ]
    logged = []
    report = bm.run_comparison(cases, peers=bm.PEERS, policy=(0.0, 1, 1), gemm=False,
                               log=logged.append)
    assert len(report["results"]) == 4 and len(logged) == 4
    available = [p for p in bm.PEERS if report["peers"][p]["available"]]
    assert "reference" in available
    for entry, case in zip(report["results"], cases):
        assert entry["flops"] == case.flops and entry["gflops"] > 0
        assert entry["times"]["bpfast"]["median"] > 0
        for peer in available:
            if peer in entry["unsupported"]:
                continue
            assert entry["ratios"][peer] > 0
            diff = entry["agreement"][peer]
            if peer == "sklearn":
                assert diff is None  # identity output: not the same function
            else:
                assert diff < (1e-10 if case.dtype == "float64" else 1e-4), (peer, case)
    assert "sklearn" in report["results"][3]["unsupported"] or \
        not report["peers"]["sklearn"]["available"]
    text = bm.format_table(report)
    assert "toy backprop" in text
    json.loads(json.dumps(report))  # everything is plain JSON


def test_json_and_plot(tmp_path):
    report = fake_report()
    bm.write_json(report, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["results"][0]["case"] == "S1"
    pytest.importorskip("matplotlib")
    bm.plot_speedups(report, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_machine_info():
    info = bm.machine_info()
    assert info["cpu"] and info["threads"] >= 1 and info["cores"] >= 1


def test_bad_options():
    parser = bm.add_arguments(argparse.ArgumentParser())
    for argv in (["--peers", "nope"], ["--cases", "XL"], ["--dtypes", "float16"],
                 ["--threads", "0"]):
        with pytest.raises(bm.UsageError):
            bm.run_from_args(parser.parse_args(argv))


def test_format_table_names_requested_threads_and_pinning():
    report = fake_report()
    report["machine"].update(threads_requested=1, cpus_pinned=[0])
    text = bm.format_table(report)
    assert "threads: 1 (--threads; process pinned to CPU(s) [0])" in text


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least 2 usable CPUs")
def test_thread_limit_pins_the_process_and_restores():
    before = os.sched_getaffinity(0)
    lines = []
    with bm._thread_limit(1, lines.append) as limit:
        assert len(os.sched_getaffinity(0)) == 1 and limit.cpus == [min(before)]
    assert os.sched_getaffinity(0) == before
    assert any("pinned" in line for line in lines)


# --------------------------------------------------------------------------------------
# the thread limit, the GEMM rate's fraction, the spread
# --------------------------------------------------------------------------------------

def test_time_runners_hold_the_blas_to_the_limit_inside_the_timed_runs():
    pytest.importorskip("threadpoolctl")
    if bm.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS")
    seen = []
    runner = bm.Runner(lambda: seen.append(bm.blas_threads()))
    out = bm.time_runners({"a": runner}, budget=0.0, min_repeats=2, max_repeats=2, settle=0,
                          threads=1)
    assert seen == [1, 1, 1]  # the warm-up and both timed runs
    assert out["a"].threads == 1


def test_run_comparison_measures_gemm_and_cases_under_one_limit(monkeypatch):
    pytest.importorskip("threadpoolctl")
    if bm.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS")
    monkeypatch.setattr(bm, "GEMM_N", 64)  # a small product: the structure, not the rate
    report = bm.run_comparison([TOY], peers=("reference",), policy=(0.0, 3, 3), threads=1)
    assert report["threads_limit"] == 1
    g = report["gemm"]["float64"]
    assert g["threads"] == 1 and len(g["samples"]) == 2  # before the case and after it
    entry = report["results"][0]
    for impl in ("bpfast", "reference"):
        t = entry["times"][impl]
        assert t["threads"] == 1
        assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"]
        assert len(t["repeats"]) == 3
    assert 0 < entry["fraction_of_gemm"] <= 1


def test_fraction_of_gemm_never_exceeds_one(monkeypatch):
    slow = {"seconds": 1.0, "gflops": 1e-12, "n": 1, "threads": None}
    monkeypatch.setattr(bm, "gemm_rate", lambda dtype, repeats=3, threads=None: dict(slow))
    report = bm.run_comparison([TOY], peers=("reference",), policy=(0.0, 1, 1))
    entry = report["results"][0]
    assert entry["above_gemm"] and entry["fraction_of_gemm"] == 1.0
    text = bm.format_table(report)
    assert "100%^" in text and "faster than every GEMM sample" in text


def test_spread():
    s = bm.spread([3.0, 1.0, 2.0, 10.0])
    assert (s["min"], s["median"], s["max"]) == (1.0, 2.5, 10.0)
    assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
