"""SpanF1 and TokenAccuracy: equal to seqeval on the same predictions, and exact under DDP."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB1, IOB2, IOBES

from chaincrf.training.metrics import SpanF1, TokenAccuracy

TYPES = ["LOC", "MISC", "ORG", "PER"]
PREFIXES = {"IOB1": "IB", "BIO": "BI", "BIOES": "BIES"}
SEQEVAL_SCHEME = {"IOB1": IOB1, "BIO": IOB2, "BIOES": IOBES}


def random_tags(rng: random.Random, scheme: str, n_sentences: int, types=TYPES):
    """Random label sequences, well-formed or not, with many spans of every shape."""
    labels = ["O"] + [f"{p}-{t}" for p in PREFIXES[scheme] for t in types]
    sentences = []
    for _ in range(n_sentences):
        length = rng.randint(0, 12)
        sentences.append([rng.choice(labels) if rng.random() < 0.6 else "O" for _ in range(length)])
    return sentences


def corrupt(rng: random.Random, sentences, scheme: str, p: float = 0.3, types=TYPES):
    labels = ["O"] + [f"{pr}-{t}" for pr in PREFIXES[scheme] for t in types]
    return [[rng.choice(labels) if rng.random() < p else tag for tag in s] for s in sentences]


def seqeval_scores(target, preds, scheme: str, strict: bool) -> dict:
    """seqeval's figures, in SpanF1's keys, for the types seqeval reports."""
    kwargs = {"mode": "strict", "scheme": SEQEVAL_SCHEME[scheme]} if strict else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings
        scores = {
            "precision": precision_score(target, preds, **kwargs),
            "recall": recall_score(target, preds, **kwargs),
            "f1": f1_score(target, preds, **kwargs),
        }
        report = classification_report(target, preds, output_dict=True, **kwargs)
    for name, row in report.items():
        if name in TYPES:
            scores[f"precision/{name}"] = row["precision"]
            scores[f"recall/{name}"] = row["recall"]
            scores[f"f1/{name}"] = row["f1-score"]
            scores[f"support/{name}"] = row["support"]
    scores["support"] = report["micro avg"]["support"] if "micro avg" in report else 0
    return scores


def assert_matches_seqeval(metric: SpanF1, target, preds, scheme: str, strict: bool) -> None:
    ours = {k: v.item() for k, v in metric.compute().items()}
    expected = seqeval_scores(target, preds, scheme, strict)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    # Types seqeval does not report have neither gold nor predicted spans.
    for name in TYPES:
        if f"f1/{name}" not in expected:
            assert ours[f"support/{name}"] == 0
            assert ours[f"f1/{name}"] == 0.0


@pytest.mark.parametrize(
    ("scheme", "strict"),
    [
        ("IOB1", False),
        ("BIO", False),
        ("BIOES", False),
        ("BIO", True),
        ("BIOES", True),
        ("IOB1", True),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_equals_seqeval_on_random_predictions(scheme, strict, seed):
    rng = random.Random(seed)
    target = random_tags(rng, scheme, 40)
    preds = corrupt(rng, target, scheme)
    metric = SpanF1(TYPES, scheme=scheme, strict=strict)
    # Several updates of different sizes add up to one pass over everything.
    for start, stop in [(0, 7), (7, 8), (8, 40)]:
        metric.update(preds[start:stop], target[start:stop])
    assert_matches_seqeval(metric, target, preds, scheme, strict)


HAND_CRAFTED = [
    # (scheme, target, prediction): ill-formed spans, touching spans, type changes, ends.
    ("BIO", [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),
    ("BIO", [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]),
    ("BIO", [["B-PER", "I-PER", "O"]], [["B-PER", "I-LOC", "O"]]),
    ("BIO", [["O", "B-ORG", "B-ORG", "I-ORG"]], [["O", "B-ORG", "I-ORG", "I-ORG"]]),
    ("BIO", [["O", "O"], ["B-MISC"]], [["O", "I-MISC"], ["I-MISC"]]),
    ("IOB1", [["I-PER", "I-PER", "B-PER", "O"]], [["I-PER", "I-PER", "I-PER", "O"]]),
    ("IOB1", [["I-LOC", "B-LOC", "I-ORG"]], [["I-LOC", "I-LOC", "I-ORG"]]),
    ("BIOES", [["B-PER", "E-PER", "S-LOC", "O"]], [["B-PER", "E-PER", "S-LOC", "O"]]),
    ("BIOES", [["B-PER", "I-PER", "E-PER"]], [["B-PER", "I-PER", "I-PER"]]),
    ("BIOES", [["S-PER", "S-PER", "O"]], [["B-PER", "E-PER", "O"]]),
    ("BIOES", [["I-ORG", "E-ORG", "O"]], [["B-ORG", "E-ORG", "O"]]),
    ("BIOES", [["O", "O", "O"]], [["O", "E-LOC", "O"]]),
    ("BIOES", [[]], [[]]),
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(("scheme", "target", "preds"), HAND_CRAFTED)
def test_equals_seqeval_on_hand_crafted_cases(scheme, target, preds, strict):
    metric = SpanF1(TYPES, scheme=scheme, strict=strict)
    metric.update(preds, target)
    assert_matches_seqeval(metric, target, preds, scheme, strict)


def test_strict_and_default_modes_differ_where_seqeval_says_so():
    target, preds = [["B-PER", "I-PER", "E-PER"]], [["B-PER", "I-PER", "I-PER"]]
    default, strict = SpanF1(TYPES, "BIOES"), SpanF1(TYPES, "BIOES", strict=True)
    default.update(preds, target)
    strict.update(preds, target)
    assert default.compute()["f1"].item() == 1.0  # conlleval: B I I is one span
    assert strict.compute()["f1"].item() == 0.0  # strict BIOES: no E-, no span


def test_hand_counted_example():
    # seqeval's docstring example: MISC predicted one token too early, PER right.
    target = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    metric = SpanF1(TYPES)
    metric.update(preds, target)
    scores = metric.compute()
    assert scores["precision"].item() == 0.5
    assert scores["recall"].item() == 0.5
    assert scores["f1/PER"].item() == 1.0
    assert scores["f1/MISC"].item() == 0.0
    assert scores["support/MISC"].item() == 1
    assert scores["support"].item() == 2
    assert scores["f1/LOC"].item() == 0.0 and scores["support/LOC"].item() == 0


def test_no_span_at_all_gives_zeros():
    metric = SpanF1(TYPES)
    metric.update([["O", "O"]], [["O", "O"]])
    scores = metric.compute()
    assert scores["f1"].item() == 0.0 and scores["support"].item() == 0


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_merged_states_equal_one_metric_over_all_data(scheme):
    """What DDP does: each rank counts its shard; the summed states give the global figures."""
    rng = random.Random(7)
    target = random_tags(rng, scheme, 60)
    preds = corrupt(rng, target, scheme)
    whole = SpanF1(TYPES, scheme=scheme)
    whole.update(preds, target)
    rank0, rank1 = SpanF1(TYPES, scheme=scheme), SpanF1(TYPES, scheme=scheme)
    rank0.update(preds[::2], target[::2])
    rank1.update(preds[1::2], target[1::2])
    assert all(
        fn is torch.sum or getattr(fn, "__name__", "") == "dim_zero_sum"
        for fn in rank0._reductions.values()
    )
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    assert merged.keys() == expected.keys()
    for key in expected:
        assert merged[key].item() == expected[key].item(), key
    assert_matches_seqeval(rank0, target, preds, scheme, strict=False)


def test_reset_clears_counts():
    metric = SpanF1(TYPES)
    metric.update([["B-PER"]], [["B-PER"]])
    metric.reset()
    metric.update([["B-PER"]], [["O"]])
    assert metric.compute()["precision"].item() == 0.0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([["B-FOO"]], r"preds holds the label 'B-FOO'"),
        ([["S-PER"]], r"preds holds the label 'S-PER'.*BIO scheme"),
        ([["PER"]], r"preds holds the label 'PER'"),
    ],
)
def test_unknown_labels_raise(labels, message):
    metric = SpanF1(TYPES, scheme="BIO")
    with pytest.raises(ValueError, match=message):
        metric.update(labels, [["O"]])
    with pytest.raises(ValueError, match=message.replace("preds", "target")):
        metric.update([["O"]], labels)


def test_update_shape_errors():
    metric = SpanF1(TYPES)
    with pytest.raises(ValueError, match="same number of sentences; got 1 and 2"):
        metric.update([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match=r"preds\[0\] and target\[0\] must have the same length"):
        metric.update([["O", "O"]], [["O"]])


def test_from_labels_takes_the_types_of_a_tag_set():
    metric = SpanF1.from_labels(["O", "B-PER", "I-PER", "S-LOC", "E-ORG"], scheme="BIOES")
    assert metric.entity_types == ["LOC", "ORG", "PER"] and metric.scheme == "BIOES"
    with pytest.raises(ValueError, match="does not fit the BIO scheme"):
        SpanF1.from_labels(["O", "S-PER"], scheme="BIO")
    with pytest.raises(ValueError, match="entity_types must be a non-empty list"):
        SpanF1.from_labels(["O"])


def test_construction_errors():
    with pytest.raises(ValueError, match="scheme must be one of"):
        SpanF1(TYPES, scheme="XYZ")
    with pytest.raises(ValueError, match="entity_types must be a non-empty list"):
        SpanF1([])
    with pytest.raises(ValueError, match="must not repeat"):
        SpanF1(["PER", "PER"])


def test_token_accuracy_counts_only_real_tokens():
    preds = torch.tensor([[1, 2, 3, 9], [4, 5, 0, 0]])
    target = torch.tensor([[1, 2, 0, 7], [4, 0, 1, 1]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    metric = TokenAccuracy()
    metric.update(preds, target, mask)
    assert metric.compute().item() == pytest.approx(3 / 5)
    other = TokenAccuracy()
    other.update(preds[:1], target[:1], mask[:1])
    rest = TokenAccuracy()
    rest.update(preds[1:], target[1:], mask[1:])
    other.merge_state(rest)
    assert other.compute().item() == metric.compute().item()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert TokenAccuracy().compute().item() == 0.0


def test_token_accuracy_errors():
    metric = TokenAccuracy()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 4, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        metric.update(
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 3, dtype=torch.long),
        )


def test_token_mean_weighs_each_value_by_its_tokens():
    from chaincrf.training.metrics import TokenMean

    metric = TokenMean()
    metric.update(torch.tensor(1.0), torch.tensor(1))
    metric.update(torch.tensor(3.0), 3)
    assert float(metric.compute()) == pytest.approx(2.5)
    metric.reset()
    assert float(metric.total) == 0.0 and float(metric.tokens) == 0.0


def test_token_mean_merged_states_equal_one_metric_over_all_values():
    from chaincrf.training.metrics import TokenMean

    values = [(torch.tensor(0.5 + i), torch.tensor(i + 1)) for i in range(6)]
    whole, first, second = TokenMean(), TokenMean(), TokenMean()
    for i, (value, tokens) in enumerate(values):
        whole.update(value, tokens)
        (first if i % 2 else second).update(value, tokens)
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()))


def test_the_label_confusion_skips_torchmetrics_argument_checks():
    """The confusion's ids come from its own label index, in range by construction: no
    ``torch.unique`` of each batch (torchmetrics' argument check, a host read on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from chaincrf.training.metrics import LabelConfusion

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    confusion = LabelConfusion(["O", "B-X", "I-X"])
    with Ops() as ops:
        confusion.update_labels([["O", "B-X"], ["I-X"]], [["O", "I-X"], ["I-X"]])
    assert not [name for name in ops.names if "unique" in name]
    assert confusion.compute().tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
