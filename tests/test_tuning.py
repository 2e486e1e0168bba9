"""bpfast.engine.tuning: the compiled core's route switches, set for a block and put back."""
import pytest

from bpfast._core import kernels as _kernels
from bpfast.engine import SWITCHES, tuning


def _current(setter, probe):
    """The values a setter holds now (set to ``probe`` and back)."""
    old = getattr(_kernels, setter)(*probe)
    getattr(_kernels, setter)(*(old if isinstance(old, tuple) else (old,)))
    return old


def test_switches_are_set_within_and_restored_after():
    before = (_current("set_small_gemm_limit", (0,)), _current("set_panel_gemm", (False, 0)),
              _current("set_direct_rows", (True,)))
    with tuning(small_gemm_limit=7, panel_threads=3, direct_rows=False):
        assert _current("set_small_gemm_limit", (0,)) == 7
        # the field left out keeps its value
        assert _current("set_panel_gemm", (False, 0)) == (before[1][0], 3)
        assert _current("set_direct_rows", (True,)) is False
        with tuning(small_gemm_limit=9):  # nested: the inner block's value, then back
            assert _current("set_small_gemm_limit", (0,)) == 9
        assert _current("set_small_gemm_limit", (0,)) == 7
    assert (_current("set_small_gemm_limit", (0,)), _current("set_panel_gemm", (False, 0)),
            _current("set_direct_rows", (True,))) == before


def test_switches_are_restored_when_the_block_raises():
    before = _current("set_signal_check", (1, 0.0))
    with pytest.raises(RuntimeError, match="inside"):
        with tuning(signal_work=5, signal_interval=0.25):
            assert _current("set_signal_check", (1, 0.0)) == (5, 0.25)
            raise RuntimeError("inside")
    assert _current("set_signal_check", (1, 0.0)) == before


@pytest.mark.parametrize("switches, error, match", [
    ({"no_such_switch": 1}, TypeError, "unknown switch 'no_such_switch'; the switches are"),
    ({"panel_gemm": 1}, TypeError, "panel_gemm: expected True or False"),
    ({"small_gemm_limit": 1.5}, TypeError, "small_gemm_limit: expected an integer"),
    ({"small_gemm_limit": True}, TypeError, "small_gemm_limit: expected an integer"),
    ({"fused_update_limit": -1}, ValueError, "fused_update_limit: expected an integer of"),
    ({"gradient_block": 0}, ValueError, "gradient_block: expected an integer of at least 1"),
    ({"signal_interval": float("nan")}, ValueError, "signal_interval: expected a finite"),
])
def test_bad_switches_raise_before_anything_changes(switches, error, match):
    before = _current("set_first_transpose_limit", (0,))
    with pytest.raises(error, match=match):
        with tuning(first_transpose_limit=before + 1, **switches):
            pytest.fail("the block ran")
    assert _current("set_first_transpose_limit", (0,)) == before


def test_every_switch_has_a_setter_and_a_description():
    for name, switch in SWITCHES.items():
        assert callable(getattr(_kernels, switch.setter)), name
        assert switch.doc, name
