"""SequenceTagger without Hydra: construction errors, plain hyper-parameters, the softmax
baseline, overfitting one batch, span confidences, save/load round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chaincrf.data import SentenceEncoder, Vocabulary, collate, read_columns, read_conllu
from chaincrf.data.schemes import allowed_transitions, get_spans
from chaincrf.data.vocab import span_tag_inventory
from chaincrf.tagger import InverseTimeDecay, SequenceTagger, build_from_spec

FIXTURES = Path(__file__).parent / "fixtures" / "tagger"
EMBEDDINGS = {
    "_target_": "chaincrf.network.embeddings.TokenEmbedder",
    "_partial_": True,
    "word_dim": 16,
    "char_encoder": "cnn",
    "char_dim": 8,
    "char_hidden": 8,
    "dropout": 0.0,
}
ENCODER = {
    "_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder",
    "hidden_size": 16,
    "dropout": 0.0,
}
ADAM = {"_target_": "torch.optim.Adam", "lr": 0.02}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ner_encoder() -> tuple[SentenceEncoder, list]:
    sentences = read_columns(FIXTURES / "train.conll")
    words = Vocabulary.build(t for s in sentences for t in s.tokens)
    chars = Vocabulary.build(c for s in sentences for t in s.tokens for c in t)
    types = {label[2:] for s in sentences for label in s.labels if label != "O"}
    tags = Vocabulary(span_tag_inventory(types, "BIOES"))
    return SentenceEncoder(words, chars, tags, scheme="BIOES", original_scheme="IOB1"), sentences


def _batch(encoder: SentenceEncoder, sentences: list) -> dict:
    items = [
        {**encoder.encode(s.tokens, s.labels), "tokens": s.tokens, "index": i}
        for i, s in enumerate(sentences)
    ]
    return collate(items)


def _tagger(sentence_encoder: SentenceEncoder, /, **kwargs) -> SequenceTagger:
    arguments = {
        "labels": sentence_encoder.tags.itos,
        "num_words": len(sentence_encoder.words),
        "num_chars": len(sentence_encoder.chars),
        "embeddings": EMBEDDINGS,
        "encoder": ENCODER,
        "scheme": sentence_encoder.scheme,
        "original_scheme": sentence_encoder.original_scheme,
        "optimizer": ADAM,
        "vocab": sentence_encoder.to_dict(),
    }
    arguments.update(kwargs)
    return SequenceTagger(**arguments)


def _fit(tagger: SequenceTagger, batch: dict, steps: int) -> float:
    optimizer = tagger.configure_optimizers()
    tagger.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = tagger.model.loss(tagger(batch), batch["tags"], batch["mask"])
        loss.backward()
        optimizer.step()
    tagger.eval()
    return float(loss.detach())


def _accuracy(tagger: SequenceTagger, batch: dict) -> float:
    with torch.no_grad():
        predicted = tagger.model.decode(tagger(batch), batch["mask"])
    mask = batch["mask"]
    return float((predicted[mask] == batch["tags"][mask]).double().mean())


@pytest.fixture(scope="module")
def ner():
    torch.manual_seed(0)
    encoder, sentences = _ner_encoder()
    batch = _batch(encoder, sentences[:16])
    tagger = _tagger(encoder)
    _fit(tagger, batch, 60)
    return tagger, batch, encoder


# ---------------------------------------------------------------- construction


def test_hyperparameters_are_plain_json():
    encoder, _ = _ner_encoder()
    tagger = _tagger(encoder)
    text = json.dumps(dict(tagger.hparams))  # no modules, partials or tensors
    assert "pretrained" not in tagger.hparams and "vocab" not in tagger.hparams
    assert json.loads(text)["labels"] == encoder.tags.itos


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"labels": []}, ValueError, "labels must be a non-empty list"),
        ({"labels": ["O", "O"]}, ValueError, "labels must be unique"),
        ({"num_words": 0}, ValueError, "num_words must be a positive int"),
        ({"scheme": "XYZ"}, ValueError, "scheme must be one of"),
        ({"scheme": None, "original_scheme": "IOB1"}, ValueError, "needs a training scheme"),
        ({"encoder": "bilstm"}, TypeError, "encoder must be a mapping with a '_target_' key"),
        (
            {"encoder": {"_target_": "chaincrf.network.encoders.nope.Nope"}},
            ValueError,
            "cannot be imported",
        ),
        ({"optimizer": {"_target_": "torch.optim.Nope"}}, ValueError, "cannot be imported"),
        (
            {"embeddings": {**EMBEDDINGS, "word_dim": -1}},
            ValueError,
            "word_dim must be a positive int",
        ),
        (
            {"pretrained": torch.zeros(3, 16)},
            ValueError,
            "pretrained must be a float tensor of shape",
        ),
        ({"dropout": 1.5}, ValueError, "dropout must be in"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval must be"),
        (
            {"encoder": {**ENCODER, "_extra": torch.nn.Linear(1, 1)}},
            TypeError,
            "must be plain data",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(change, error, match):
    encoder, _ = _ner_encoder()
    with pytest.raises(error, match=match):
        _tagger(encoder, **change)


def test_label_outside_the_scheme_fails_at_construction():
    encoder, _ = _ner_encoder()
    with pytest.raises(ValueError, match="does not fit the BIOES scheme"):
        _tagger(encoder, labels=["O", "B-PER", "X-PER"])


def test_build_from_spec_fills_runtime_sizes_only_when_unset():
    layer = build_from_spec(
        {"_target_": "torch.nn.Linear", "_partial_": True, "out_features": 3}, "x", in_features=4
    )
    assert (layer.in_features, layer.out_features) == (4, 3)
    layer = build_from_spec(
        {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3}, "x", in_features=4
    )
    assert layer.in_features == 2


def test_inverse_time_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.015)
    scheduler = InverseTimeDecay(optimizer, decay=0.05)
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.015, 0.015 / 1.05, 0.015 / 1.1])
    with pytest.raises(ValueError, match="decay must be >= 0"):
        InverseTimeDecay(optimizer, decay=-1)


# ---------------------------------------------------------------- training and prediction


def test_overfit_one_batch_crf(ner):
    tagger, batch, _ = ner
    assert _accuracy(tagger, batch) == 1.0


def test_overfit_one_batch_softmax_and_pos():
    torch.manual_seed(0)
    sentences = read_conllu(FIXTURES / "train.conllu")[:16]
    words = Vocabulary.build(t for s in sentences for t in s.tokens)
    chars = Vocabulary.build(c for s in sentences for t in s.tokens for c in t)
    tags = Vocabulary.build(
        (label for s in sentences for label in s.labels), specials=False, order="sorted"
    )
    encoder = SentenceEncoder(words, chars, tags)
    batch = _batch(encoder, sentences)
    tagger = _tagger(encoder, use_crf=False, scheme=None, original_scheme=None)
    assert tagger.model.crf is None and not tagger.tags.is_span_task
    _fit(tagger, batch, 60)
    assert _accuracy(tagger, batch) == 1.0
    tagged = tagger.predict([sentences[0].tokens])[0]
    assert tagged.tags == sentences[0].labels and tagged.spans == []


def test_constraints_are_applied(ner):
    tagger, _, _ = ner
    crf = tagger.model.crf
    o, i_per = tagger.labels.index("O"), tagger.labels.index("I-PER")
    assert crf.has_constraints and not bool(crf.transitions_allowed[o, i_per])
    unconstrained = _tagger(_ner_encoder()[0], constrain=False)
    assert not unconstrained.model.crf.has_constraints


def test_predict_outputs(ner):
    tagger, _, _ = ner
    sentence = read_columns(FIXTURES / "train.conll")[0]  # in the training batch
    results = tagger.predict(
        [" ".join(sentence.tokens), "", ["EU", "rejects", "French", "lamb", "."]]
    )
    assert [r.tokens for r in results] == [
        sentence.tokens,
        [],
        ["EU", "rejects", "French", "lamb", "."],
    ]
    first = results[0]
    assert first.tags == sentence.labels  # the original scheme (IOB1), learnt by heart
    expected = [
        (t, a, b, " ".join(sentence.tokens[a:b])) for t, a, b in get_spans(sentence.labels, "IOB1")
    ]
    assert [(s.type, s.start, s.end, s.text) for s in first.spans] == expected
    assert expected  # the sentence has spans
    for result in results:
        assert len(result.confidences) == len(result.tokens)
        assert all(0.0 < p <= 1.0 for p in result.confidences)
        for span in result.spans:
            # P(the span is labelled so) <= P(any one of its tokens is labelled so)
            assert 0.0 < span.confidence <= min(result.confidences[span.start : span.end]) + 1e-5
    assert json.loads(json.dumps(first.to_dict()))["spans"][0]["type"] == "PER"
    with pytest.raises(TypeError, match="got a single string"):
        tagger.predict("EU rejects German call .")


def test_single_token_span_confidence_is_its_marginal(ner):
    # In BIOES a one-token span is one S- tag: its probability is that tag's marginal.
    tagger, _, _ = ner
    tokens = ["Mary", "visited", "Tokyo", "."]
    batch = tagger.encode([tokens])
    marginals = tagger.model.marginals(tagger(batch), batch["mask"])[0]
    result = tagger.predict([tokens])[0]
    singles = [s for s in result.spans if s.end - s.start == 1]
    assert singles
    for span in singles:
        s_tag = tagger.labels.index(f"S-{span.type}")
        assert span.confidence == pytest.approx(float(marginals[span.start, s_tag]), abs=1e-4)


SPAN_PATHS = {
    # rows of length 4, 4 and 3 (the last padded): multi-token spans, spans at both ends, and
    # (IOB1) spans starting with I- after position 0, whose left neighbour must not extend them
    "BIOES": [
        ["B-PER", "E-PER", "S-LOC", "O"],
        ["O", "B-LOC", "I-LOC", "E-LOC"],
        ["S-PER", "B-LOC", "E-LOC"],
    ],
    "IOB1": [
        ["I-PER", "I-PER", "I-LOC", "O"],
        ["O", "I-PER", "I-PER", "B-PER"],
        ["I-LOC", "I-PER", "I-PER"],
    ],
}


@pytest.mark.parametrize("scheme", ["BIOES", "IOB1"])
def test_span_confidences_equal_brute_force_enumeration(scheme):
    # P(span) = total probability of the paths that tag the span's tokens as predicted and in
    # which it is a span (nothing extends it), by enumerating every path of each sentence.
    import itertools

    torch.manual_seed(0)
    labels = span_tag_inventory(["PER", "LOC"], scheme)
    tagger = SequenceTagger(
        labels=labels,
        num_words=4,
        num_chars=4,
        embeddings=EMBEDDINGS,
        encoder=ENCODER,
        scheme=scheme,
        original_scheme=scheme,
        optimizer=ADAM,
    )
    crf = tagger.model.crf
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_()
    rows = SPAN_PATHS[scheme]
    start_ok, end_ok, follow_ok = allowed_transitions(scheme, labels)
    B, T, K = len(rows), 4, len(labels)
    emissions = torch.randn(B, T, K)
    mask = torch.tensor([[t < len(r) for t in range(T)] for r in rows])
    paths = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        paths[b, : len(row)] = torch.tensor([labels.index(tag) for tag in row])
    # favour the given paths a little, so that their spans have probabilities worth comparing
    emissions += 2.0 * torch.nn.functional.one_hot(paths.clamp(min=0), K) * mask.unsqueeze(-1)
    spans_per_row = [get_spans(row, scheme) for row in rows]
    assert sum(end - start > 1 for spans in spans_per_row for _, start, end in spans) == 3
    with torch.no_grad():
        got = tagger.predictor.span_confidences(emissions, mask, paths, None, spans_per_row)

    for b, row in enumerate(rows):
        n = len(row)
        every = torch.tensor(list(itertools.product(range(K), repeat=n)))  # (K^n, n)
        valid = start_ok[every[:, 0]] & end_ok[every[:, -1]]
        for t in range(1, n):
            valid &= follow_ok[every[:, t - 1], every[:, t]]
        every = every[valid]  # the rest have probability zero under the constraints
        with torch.no_grad():
            log_p = crf(emissions[b : b + 1, :n].expand(len(every), n, K), every, reduction="none")
        probability = log_p.exp()
        assert float(probability.sum()) == pytest.approx(1.0, abs=1e-4)
        found = [get_spans([labels[i] for i in path], scheme) for path in every.tolist()]
        for (type_, start, end), confidence in zip(spans_per_row[b], got[b]):
            keep = torch.tensor(
                [
                    path[start:end] == paths[b, start:end].tolist() and (type_, start, end) in spans
                    for path, spans in zip(every.tolist(), found)
                ]
            )
            expected = float(probability[keep].sum())
            assert expected > 1e-3  # the check means something
            assert confidence == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_decode_under_inference_mode(ner):
    # Lightning's validate/test/predict loops run under torch.inference_mode(); a single long
    # sentence is the case where the CRF may take its small-batch Viterbi path.
    tagger, batch, _ = ner
    long_batch = tagger.encode([batch["tokens"][0] * 4])
    with torch.no_grad():
        expected = tagger.model.decode(tagger(long_batch), long_batch["mask"])
    with torch.inference_mode():
        got = tagger.model.decode(tagger(long_batch), long_batch["mask"])
    assert torch.equal(got, expected)


def test_predict_matches_training_batch_decode(ner):
    tagger, batch, encoder = ner
    with torch.no_grad():
        paths = tagger.model.decode(tagger(batch), batch["mask"])
    expected = [
        encoder.to_original_scheme(t) for t in tagger.tags.decode_batch(paths, batch["mask"])
    ]
    results = tagger.predict(batch["tokens"], batch_size=5)
    assert [r.tags for r in results] == expected


def test_bundle_round_trip_predicts_identically(ner, tmp_path):
    tagger, batch, _ = ner
    tagger.save_bundle(tmp_path / "bundle")
    reloaded = SequenceTagger.load(tmp_path / "bundle")
    sentences = batch["tokens"]
    assert [r.to_dict() for r in reloaded.predict(sentences)] == [
        r.to_dict() for r in tagger.predict(sentences)
    ]
    with pytest.raises(FileNotFoundError, match="not found"):
        SequenceTagger.load(tmp_path / "missing.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a chaincrf bundle"):
        SequenceTagger.load(tmp_path / "empty")


def test_word_adapter_model_round_trips_through_a_bundle(tmp_path):
    encoder, sentences = _ner_encoder()
    vectors = torch.randn(len(encoder.words), EMBEDDINGS["word_dim"])
    tagger = _tagger(encoder, pretrained=vectors, embeddings={**EMBEDDINGS, "word_adapter": True})
    _fit(tagger, _batch(encoder, sentences[:8]), steps=3)
    assert tagger.model.embedder.word_residual.weight.abs().sum() > 0  # it trained
    tagger.save_bundle(tmp_path / "bundle")
    reloaded = SequenceTagger.load(tmp_path / "bundle")  # rebuilt without the vectors
    tokens = [s.tokens for s in sentences[:8]]
    assert [r.to_dict() for r in reloaded.predict(tokens)] == [
        r.to_dict() for r in tagger.predict(tokens)
    ]
    torch.testing.assert_close(reloaded.model.embedder.word_embedding.weight, vectors)


def test_predict_without_vocab_is_a_clear_error():
    encoder, _ = _ner_encoder()
    tagger = _tagger(encoder, vocab=None)
    with pytest.raises(ValueError, match="has no vocab"):
        tagger.predict([["EU"]])


def test_word_lr_scale_gives_the_word_table_its_own_learning_rate():
    encoder, sentences = _ner_encoder()
    tagger = _tagger(encoder, word_lr_scale=0.25)
    optimizer = tagger.configure_optimizers()
    word = tagger.model.embedder.word_embedding.weight
    groups = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    base = ADAM["lr"]
    assert groups[id(word)] == pytest.approx(0.25 * base)
    others = [p for p in tagger.parameters() if p is not word]
    assert others and all(groups[id(p)] == pytest.approx(base) for p in others)
    assert len(groups) == len(list(tagger.parameters()))  # every parameter, once
    # 0: the table stays as it was while the rest trains.
    tagger = _tagger(encoder, word_lr_scale=0.0)
    word = tagger.model.embedder.word_embedding.weight
    before_word, before_crf = word.detach().clone(), tagger.model.crf.transitions.detach().clone()
    _fit(tagger, _batch(encoder, sentences[:8]), steps=3)
    assert torch.equal(word, before_word)
    assert not torch.equal(tagger.model.crf.transitions, before_crf)
    for bad in (-1.0, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="word_lr_scale"):
            _tagger(encoder, word_lr_scale=bad)
    # with word_adapter, the scale applies to the trainable per-word correction
    vectors = torch.randn(len(encoder.words), EMBEDDINGS["word_dim"])
    tagger = _tagger(
        encoder,
        word_lr_scale=0.25,
        pretrained=vectors,
        embeddings={**EMBEDDINGS, "word_adapter": True},
    )
    groups = {
        id(p): g["lr"] for g in tagger.configure_optimizers().param_groups for p in g["params"]
    }
    assert groups[id(tagger.model.embedder.word_residual.weight)] == pytest.approx(0.25 * base)
    assert groups[id(tagger.model.embedder.word_map.weight)] == pytest.approx(base)


class HostReads:
    """Counts the host reads of tensor values (``.item()``, ``bool()``, ``.tolist()``,
    ``nonzero``, mask indexing, ``unique``, ``bincount``: each a synchronisation on a GPU) made by the training system's own code (the
    tagger's module and callbacks, Lightning's loop) during training batches. The network's and
    the CRF's reads are not counted: they have their own checks (``test_sync_free.py``, the GPU
    check), and the CPU runs paths of their own there; nor the optimiser's step counter, a CPU
    tensor on every device."""

    def __init__(self) -> None:
        import traceback

        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        # each reads values on the host on a GPU: a scalar, the positions of a mask (nonzero,
        # masked_select, and indexing with a bool mask, which calls nonzero there), the
        # distinct values or counts (unique, bincount: output sizes from the data)
        reads = {aten._local_scalar_dense.default, aten.nonzero.default,
                 aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                 aten.unique_consecutive.default, aten.bincount.default}  # fmt: skip
        masked = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}

        def by_mask(func, args) -> bool:  # an index (args[1]) holding a bool or uint8 mask
            return func in masked and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in args[1]
            )

        self.count = 0
        counter = self

        def owner() -> str:
            for frame in reversed(traceback.extract_stack()):
                name = frame.filename.replace("\\", "/")
                for part in (
                    "chaincrf/training/",
                    "pytorch_lightning/",
                    "chaincrf/",
                    "torch/optim/",
                    "torch/autograd/graph.py",  # the backward of a network's or CRF's operation
                ):
                    if part in name:
                        return part
            return ""

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                to_host = (
                    func is aten._to_copy.default and str((kwargs or {}).get("device")) == "cpu"
                )
                if (func in reads or to_host or by_mask(func, args)) and owner() in (
                    "chaincrf/training/",
                    "pytorch_lightning/",
                ):
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode

    def callback(self):
        import pytorch_lightning as pl

        counter = self

        class During(pl.Callback):
            def on_train_batch_start(self, *args):
                self.mode = counter.mode()
                self.mode.__enter__()

            def on_train_batch_end(self, *args):
                self.mode.__exit__(None, None, None)

        return During()


@pytest.mark.parametrize("every", [1, 4])
def test_the_training_loop_reads_the_loss_on_the_host_only_every_n_steps(tmp_path, every):
    """The non-finite loss check, read each step (the CPU's default) or every 4 steps (an
    accelerator's): the training loop's only host reads, so that a GPU step waits for nothing."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from chaincrf.training.callbacks import LossCheck

    torch.manual_seed(0)
    encoder, sentences = _ner_encoder()
    batch = _batch(encoder, sentences[:8])
    tagger = _tagger(encoder)
    tagger.loss_check = LossCheck(every)
    reads = HostReads()
    trainer = pl.Trainer(max_steps=8, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, gradient_clip_val=5.0, callbacks=[reads.callback()],
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(tagger, DataLoader([batch] * 8, batch_size=None))
    assert trainer.global_step == 8
    assert reads.count == 8 // every


@pytest.mark.parametrize("every", [0, -3, 2.5, True, "50"])
def test_the_loss_check_takes_a_positive_number_of_steps(every):
    from chaincrf.training.callbacks import LossCheck

    with pytest.raises(
        ValueError, match=r"^nan_check_every must be a positive integer or null; got"
    ):
        LossCheck(every)


def test_training_logs_no_per_step_figure_that_lightning_copies_to_the_host(tmp_path):
    """A figure logged per step for the progress bar is copied to the host after every step by
    Lightning (a synchronisation per step on a GPU): the step's loss stays on the module, on
    the device, for the bar to read at most once a second."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    encoder, sentences = _ner_encoder()
    batch = _batch(encoder, sentences[:8])
    tagger = _tagger(encoder)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(tagger, DataLoader([batch] * 3, batch_size=None))
    assert trainer.global_step == 3
    assert dict(trainer.progress_bar_metrics) == {}  # nothing logged per step for the bar
    assert isinstance(tagger.step_loss, torch.Tensor) and not tagger.step_loss.requires_grad
    assert torch.isfinite(tagger.step_loss)


def test_the_logged_losses_are_per_token_over_the_epoch(tmp_path):
    """train/loss and val/loss are the epoch's loss per token: each batch's loss per token
    weighted by its tokens (batches of 2 and of 10 sentences here), not the batches' plain
    mean (what torchmetrics' MeanMetric(nan_strategy="disable") gave)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    encoder, sentences = _ner_encoder()
    batches = [_batch(encoder, sentences[:2]), _batch(encoder, sentences[2:12])]
    assert int(batches[0]["mask"].sum()) * 2 < int(batches[1]["mask"].sum())
    tagger = _tagger(encoder)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    logged = trainer.validate(tagger, DataLoader(batches, batch_size=None), verbose=False)[0]
    with torch.no_grad():
        losses = [tagger.model.loss(tagger(b), b["tags"], b["mask"]) for b in batches]
    tokens = [b["mask"].sum() for b in batches]
    per_token = float(sum(loss * n for loss, n in zip(losses, tokens)) / sum(tokens))
    assert abs(per_token - float(sum(losses)) / 2) > 1e-3  # the two means differ here
    assert logged["val/loss"] == pytest.approx(per_token, rel=1e-5)

    steps = []  # (the step's loss per token, its tokens), as training_step returned them

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            steps.append((float(outputs["loss"]), int(batch["mask"].sum())))

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[Record()],
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(tagger, DataLoader(batches, batch_size=None))
    expected = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
    assert len(steps) == 2
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)


def test_predictions_are_computed_in_the_training_precision(tmp_path):
    """A model trained in bf16-mixed predicts with its network under bfloat16 autocast, as
    chaincrf-eval evaluates it, and the CRF in float32: the confidences are those of the
    autocast network, not of a float32 one, in float32. The precision travels in the model
    file to the Lightning-free predictor too."""
    from chaincrf.predict.bundle import load_predictor

    torch.manual_seed(0)
    encoder, sentences = _ner_encoder()
    tagger = _tagger(encoder).eval()  # untrained: confidences far from 1
    tokens = [list(s.tokens) for s in sentences[:6]]
    in_float32 = [s.confidences for s in tagger.predict(tokens)]
    tagger.trained_precision = "bf16-mixed"
    in_bf16 = [s.confidences for s in tagger.predict(tokens)]
    encoded = tagger.predictor.encode(tokens)
    mask = encoded["mask"]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emissions = tagger.model.emissions(encoded)
        assert emissions.dtype == torch.bfloat16  # the projection ran in autocast
        marginals = tagger.model.marginals(emissions.float(), mask)
        paths = tagger.model.decode(emissions.float(), mask)
    chosen = marginals.gather(-1, paths.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    for row, (got, in32) in enumerate(zip(in_bf16, in_float32)):
        want = chosen[row, : int(mask[row].sum())].tolist()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)  # (confidences: 6 decimals)
        assert got != pytest.approx(in32, rel=1e-4)
    folder = tagger.save_pretrained(tmp_path / "model")
    loaded = load_predictor(folder)
    assert loaded.precision == "bf16-mixed"
    for got, want in zip(loaded.predict(tokens), in_bf16):
        assert got.confidences == pytest.approx(want)
