import math

import pytest

from trl_mtp.schedules import mtp_lambda_at, mtp_step_plan, mtp_window_at, validate_schedule


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 0, 0.3),
        ("constant", 99, 0.3),
        ("step", 0, 0.3),
        ("step", 67, 0.3),
        ("step", 68, 0.1),
        ("step", 100, 0.1),
        ("linear", 0, 0.3),
        ("linear", 50, 0.2),
        ("linear", 100, 0.1),
        ("cosine", 0, 0.3),
        ("cosine", 50, 0.2),
        ("cosine", 100, 0.1),
        ("cosine", 25, 0.1 + 0.2 * (1 + math.cos(math.pi / 4)) / 2),
    ],
)
def test_lambda_schedule_values(schedule, step, expected):
    got = mtp_lambda_at(step, 100, start=0.3, end=0.1, schedule=schedule, step_fraction=0.675)
    assert got == pytest.approx(expected)


def test_window_curriculum_grows_and_shrinks():
    forward = [mtp_window_at(s, 100, num_heads=4, schedule="forward") for s in (0, 24, 25, 50, 75, 99, 100)]
    reverse = [mtp_window_at(s, 100, num_heads=4, schedule="reverse") for s in (0, 24, 25, 50, 75, 99, 100)]
    assert forward == [1, 1, 2, 3, 4, 4, 4]
    assert reverse == [4, 4, 3, 2, 1, 1, 1]
    assert all(mtp_window_at(s, 100, num_heads=4, schedule="off") == 4 for s in range(0, 101, 10))


def test_frequency_gates_steps():
    applied = [s for s in range(10) if mtp_step_plan(s, 10, num_heads=2, mtp_lambda=0.3, mtp_every_n_steps=3).apply]
    assert applied == [0, 3, 6, 9]


@pytest.mark.parametrize(
    "field, value",
    [
        ("mtp_lambda_schedule", "exponential"),
        ("mtp_lambda_end", -1.0),
        ("mtp_lambda_step_fraction", 1.5),
        ("mtp_every_n_steps", 0),
        ("mtp_window_schedule", "sideways"),
    ],
)
def test_bad_schedule_values_name_the_field(field, value):
    kwargs = dict(
        mtp_lambda_schedule="constant",
        mtp_lambda_end=0.1,
        mtp_lambda_step_fraction=0.5,
        mtp_every_n_steps=1,
        mtp_window_schedule="off",
    )
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        validate_schedule(**kwargs)
