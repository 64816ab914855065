"""MetricsCallback's label check under 2-process DDP: a bad label on one rank stops both."""

import pytest


@pytest.mark.ddp
def test_a_label_outside_num_classes_on_one_rank_is_reported_by_rank_0(run_scenario):
    # Row 12 is on rank 1 only: rank 0 can name it only through the epoch-end collective,
    # and a rank that skipped the collective would hang (the harness reports a hang apart).
    with pytest.raises(pytest.fail.Exception) as failure:
        run_scenario("metrics_ddp", devices=2, bad_label=5, timeout=240)
    log = str(failure.value)
    assert "hung for" not in log
    message = (
        "ValueError: MetricsCallback[name=classes]: metric 'auroc' got 1 val dataloader 0 "
        "label(s) of key 'label' outside 0..1 or ignore_index=-1 (num_classes=2): smallest 5, "
        "largest 5"
    )
    assert f"[rank0]: {message}" in log


def test_one_process_reports_the_label_with_its_first_loader(run_scenario):
    with pytest.raises(pytest.fail.Exception) as failure:
        run_scenario("metrics_ddp", devices=1, bad_label=-4)
    assert "metric 'auroc' got 1 val dataloader 0 label(s) of key 'label'" in str(failure.value)
    assert "smallest -4, largest -4" in str(failure.value)
