"""The 2-process tests' report parsing: a rank's report is found even when the other rank's log shares the pipe."""

from two_process import parse_reports


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
