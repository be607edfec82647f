"""pipelines/core/tasks.py: windowed Ray tasks, results by index, a task's own error re-raised."""

from __future__ import annotations

import pytest

from pipelines.core.tasks import imap_tasks, own_error, ray_up


def square_unless_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"no square for {x}")
    return x * x


@pytest.mark.ray
def test_every_job_comes_back_once_by_index_through_a_small_window(ray_session):
    assert ray_up() is ray_session
    got = dict(imap_tasks(square_unless_three, [(x,) for x in (0, 1, 2, 4, 5, 6, 7)], window=2))
    assert got == {0: 0, 1: 1, 2: 4, 3: 16, 4: 25, 5: 36, 6: 49}


@pytest.mark.ray
def test_a_failing_task_raises_its_own_error(ray_session):
    with pytest.raises(KeyError) as err:
        list(imap_tasks(square_unless_three, [(x,) for x in range(6)], window=3))
    assert type(err.value) is KeyError and "no square for 3" in str(err.value)
    assert not isinstance(err.value, ray_session.exceptions.RayTaskError)


@pytest.mark.unit
def test_own_error_of_a_plain_exception_is_itself():
    e = ValueError("x")
    assert own_error(e) is e
