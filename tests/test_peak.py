"""eenet._core.peak_gflops: the FMA-throughput probe behind benchmarks/kernels.py's %pk."""
import pytest

import eenet
from eenet import _core


def test_peak_is_positive_and_reports_the_vector_width():
    gflops, lanes = _core.peak_gflops(0.05, 1)
    assert lanes in (1, 8, 16)
    # at least one FMA lane at 100 MHz: any working CPU passes, a broken
    # FLOP count (0, negative, NaN) does not
    assert 0.2 <= gflops < 1e5


def test_cpu_clock_agrees_with_wall_clock_on_one_thread():
    # one busy thread: CPU time and wall time differ only by scheduling, so the
    # best rates of the two clocks are within a factor of 3 of each other even
    # on a loaded machine
    wall, _ = _core.peak_gflops(0.1, 1, False)
    cpu, _ = _core.peak_gflops(0.1, 1, True)
    assert 1 / 3 < cpu / wall < 3


@pytest.mark.parametrize("kwargs,word", [
    (dict(seconds=0.0), "seconds"), (dict(seconds=-1.0), "seconds"),
    (dict(seconds=float("nan")), "seconds"), (dict(seconds=61.0), "seconds"),
    (dict(threads=0), "threads")])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        _core.peak_gflops(**kwargs)


def test_default_thread_count_is_the_cores():
    assert eenet.get_num_threads() >= 1
    gflops, _ = _core.peak_gflops(0.05)
    assert gflops > 0
