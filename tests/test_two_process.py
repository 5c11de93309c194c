"""The 2-process tests' helpers (tests/two_process.py): report parsing (a rank's report is found even when the other
rank's log shares the pipe), and the xdist group every 2-process test must be in."""

import os

import pytest
from two_process import TWO_PROCESS_GROUP, launch, parse_reports


def test_reports_survive_the_other_ranks_unterminated_log_line():
    # what CI once captured: rank 0's last log dict, then rank 1's report, then rank 0's newline and report
    stdout = (
        "{'train_loss': '8.113', 'epoch': '0.5'}\nRANK 1 OF 2 loss_depth_1=7.6362 mode=MULTI_CPU\n\n"
        "\nRANK 0 OF 2 loss_depth_1=7.6362 mode=MULTI_CPU\n"
    )
    reports = parse_reports(stdout)
    assert [(r["rank"], r["world"], r["loss_depth_1"], r["mode"]) for r in reports] == [
        ("1", "2", "7.6362", "MULTI_CPU"),
        ("0", "2", "7.6362", "MULTI_CPU"),
    ]
    assert parse_reports("{'epoch': '0.5'}RANK 1 OF 2 x=1\n") == []  # a report not on its own line is not one


def test_launch_refuses_a_test_outside_the_two_process_group_under_xdist(monkeypatch, tmp_path):
    """Under pytest-xdist (scripts/test.sh) a 2-process test left out of the group would run beside the group's runs
    on the other worker: `launch` refuses before starting anything. This test is in no group (tests/conftest.py
    tells `launch` so)."""
    assert os.environ["TRL_MTP_TEST_XDIST_GROUP"] == ""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.raises(RuntimeError, match=f"mark it xdist_group\\('{TWO_PROCESS_GROUP}'\\)"):
        launch(tmp_path / "never_started.py", port=29500)


@pytest.mark.xdist_group(TWO_PROCESS_GROUP)
def test_a_test_in_the_group_is_told_so():
    assert os.environ["TRL_MTP_TEST_XDIST_GROUP"] == TWO_PROCESS_GROUP
