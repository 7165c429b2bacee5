"""The learning-curve plot's data: epochs trained only (no phantom epoch from the final
re-validation of the best checkpoint), numbered from 1 as the console's epoch lines, the test
score apart from the dev curve."""

from __future__ import annotations

from chaincrf.training.report import learning_curves, read_metrics_csv

CSV = """epoch,step,train/loss,val/score,val/loss,test/score
0,9,,0.50,0.9,
0,9,1.2,,,
1,19,,0.70,0.6,
1,19,0.8,,,
2,29,,0.65,0.7,
2,29,0.5,,,
3,29,,0.70,0.6,
3,29,,,,0.68
"""


def test_curves_hold_the_trained_epochs_and_the_test_apart(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(CSV)
    curves, test = learning_curves(read_metrics_csv(path))
    # the CSV's epochs 0-2 are the console's "epoch 1/3" to "epoch 3/3"; not the CSV's epoch 3
    assert curves["val/score"] == [(1.0, 0.5), (2.0, 0.7), (3.0, 0.65)]
    assert [x for x, _ in curves["train/loss"]] == [1.0, 2.0, 3.0]
    assert [x for x, _ in curves["val/loss"]] == [1.0, 2.0, 3.0]
    assert test == 0.68 and "test/score" not in curves


def test_without_a_test_or_training_rows():
    curves, test = learning_curves({"val/score": [(0.0, 0.4)]})
    assert curves == {"val/score": [(1.0, 0.4)]} and test is None
