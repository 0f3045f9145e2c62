"""SIGKILL at random points of a tiny run, resumed each time (tests/kill_resume.py): same weights, no temporaries."""
import pytest

from kill_resume import check


@pytest.mark.slow
def test_run_killed_20_times_and_resumed_ends_like_an_uninterrupted_one(tmp_path):
    assert check(kills=20, seed=0, work=tmp_path) == []
