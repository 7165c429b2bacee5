"""The run folder's own files: the metrics of a run before its resume are put back in front."""

from __future__ import annotations

import csv

from chaincrf.cli.run_folder import prepend_metrics


def test_resumed_metrics_keep_every_column_of_both_runs(tmp_path):
    # before the resume: epoch rows, the last with a column the first lacks (train/loss)
    earlier = "epoch,step,val/score,train/loss\n0,9,0.5,\n1,19,0.6,1.25\n"
    path = tmp_path / "metrics.csv"
    # the resumed run logs from step 19 again, with a column of its own
    path.write_text("epoch,step,val/score,lr\n1,19,0.61,0.001\n2,29,0.7,0.001\n")
    prepend_metrics(path, earlier)
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["9", "19", "29"]  # step 19 from the resumed run only
    assert list(rows[0]) == ["epoch", "step", "val/score", "train/loss", "lr"]
    assert rows[1]["val/score"] == "0.61" and rows[0]["train/loss"] == ""
