"""Prediction in bounded memory: exact span confidences in O(T·K) memory (against the former
O(spans·T·K) formula through ``crf.partial_log_likelihood``), and ``chaincrf-predict`` reading,
tagging and writing chunk by chunk, one record per input line split on "\\n" only."""

from __future__ import annotations

import io
import itertools
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from chaincrf.cli.predict import predict, text_lines
from chaincrf.crf.confidence import crf_scores, span_log_probabilities
from chaincrf.data import SentenceEncoder, Vocabulary, collate, read_columns
from chaincrf.data.schemes import get_spans
from chaincrf.data.vocab import span_tag_inventory
from chaincrf.tagger import SequenceTagger

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXTURES = Path(__file__).parent / "fixtures" / "tagger"
EMBEDDINGS = {
    "_target_": "chaincrf.network.embeddings.TokenEmbedder",
    "_partial_": True,
    "word_dim": 8,
    "char_encoder": "cnn",
    "char_dim": 4,
    "char_hidden": 4,
    "dropout": 0.0,
}
ENCODER = {
    "_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder",
    "hidden_size": 8,
    "dropout": 0.0,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_span_confidences(tagger, emissions, mask, paths, spans_per_row):
    """The former ``SequenceTagger._span_confidences`` (CRF branch), kept as the reference: one
    copy of the sentence per span, its tags forced through ``crf.partial_log_likelihood``."""
    flat = [(row, start, end) for row, spans in enumerate(spans_per_row) for _, start, end in spans]
    result = [[] for _ in spans_per_row]
    if not flat:
        return result
    crf = tagger.model.crf
    _, T, K = emissions.shape
    device = emissions.device
    rows, starts, ends = torch.tensor(flat, dtype=torch.long, device=device).unbind(1)
    N = rows.shape[0]
    span_mask = mask[rows]
    span_paths = paths[rows].clamp(min=0)
    steps = torch.arange(T, device=device)
    inside = (steps >= starts.unsqueeze(1)) & (steps < ends.unsqueeze(1))
    allowed = span_mask.unsqueeze(-1).expand(N, T, K).clone()
    allowed[inside] = False
    at, pos = inside.nonzero(as_tuple=True)
    allowed[at, pos, span_paths[at, pos]] = True
    after, before, first_is_inside = (t.to(device) for t in tagger.predictor.continuation_tables)
    first = span_paths.gather(1, starts.unsqueeze(1)).squeeze(1)
    n_real = span_mask.sum(1)
    extend = (ends < n_real).nonzero(as_tuple=True)[0]
    allowed[extend, ends[extend]] &= ~after[first[extend]]
    extend = ((starts > 0) & first_is_inside[first]).nonzero(as_tuple=True)[0]
    allowed[extend, starts[extend] - 1] &= ~before[first[extend]]
    log_p = crf.partial_log_likelihood(emissions[rows], allowed, mask[rows], reduction="none")
    for (row, _, _), value in zip(flat, log_p.exp().tolist()):
        result[row].append(round(float(value), 6))
    return result


def _span_tagger(scheme: str, constrain: bool, seed: int) -> SequenceTagger:
    torch.manual_seed(seed)
    tagger = SequenceTagger(
        labels=span_tag_inventory(["PER", "LOC"], scheme),
        num_words=4,
        num_chars=4,
        embeddings=EMBEDDINGS,
        encoder=ENCODER,
        scheme=scheme,
        constrain=constrain,
    )
    with torch.no_grad():
        for parameter in tagger.model.crf.parameters():
            parameter.normal_()
    return tagger


def _random_case(tagger: SequenceTagger, lengths: list[int], viterbi: bool):
    """Emissions (B, T, K), a ragged mask, predicted (Viterbi) or random paths and their spans."""
    B, T, K = len(lengths), max(lengths), len(tagger.labels)
    emissions = 2.0 * torch.randn(B, T, K)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if viterbi:
        paths = tagger.model.decode(emissions, mask)
    else:
        paths = torch.randint(0, K, (B, T)).masked_fill(~mask, -1)
    rows = tagger.tags.decode_batch(paths, mask)
    return emissions, mask, paths, [get_spans(tags, tagger.tags.scheme) for tags in rows]


CASES = [(s, c) for s in ("BIO", "BIOES", "IOB1") for c in (True, False)]


@pytest.mark.parametrize(("scheme", "constrain"), CASES)
def test_span_confidences_equal_the_partial_likelihood_formula(scheme, constrain):
    seen = {"at start": 0, "at end": 0, "multi-token": 0, "I- first after start": 0}
    for seed in range(6):
        tagger = _span_tagger(scheme, constrain, seed)
        # predicted paths, and random ones (impossible under constraints: probability 0)
        for lengths, viterbi in (([7, 1, 5, 3, 7, 2], True), ([6, 4, 1, 6], False)):
            emissions, mask, paths, spans = _random_case(tagger, lengths, viterbi)
            with torch.no_grad():
                got = tagger.predictor.span_confidences(emissions, mask, paths, None, spans)
                expected = reference_span_confidences(tagger, emissions, mask, paths, spans)
            assert [len(row) for row in got] == [len(row) for row in spans]
            for got_row, expected_row in zip(got, expected):
                assert got_row == pytest.approx(expected_row, abs=1e-5)
            for row, row_spans in enumerate(spans):
                for _, start, end in row_spans:
                    first = tagger.labels[int(paths[row, start])]
                    seen["at start"] += start == 0
                    seen["at end"] += end == lengths[row]
                    seen["multi-token"] += end - start > 1
                    seen["I- first after start"] += start > 0 and first.startswith("I-")
    if scheme != "IOB1":  # an I- tag only starts a span after position 0 in IOB1 (or badly formed)
        seen.pop("I- first after start")
    assert all(count > 0 for count in seen.values()), seen


def test_span_log_probabilities_batched_equals_one_row_at_a_time():
    tagger = _span_tagger("BIOES", True, 0)
    emissions, mask, paths, spans = _random_case(tagger, [9, 4, 1, 6], viterbi=True)
    scores = crf_scores(tagger.model.crf)
    tables = tagger.predictor.continuation_tables
    flat = torch.tensor([(r, s, e) for r, row in enumerate(spans) for _, s, e in row])
    batched = span_log_probabilities(emissions, mask, paths, flat, scores, tables)
    assert batched.dtype == torch.float64 and batched.shape == (len(flat),)
    for i, (row, start, end) in enumerate(flat.tolist()):
        n = int(mask[row].sum())
        one = span_log_probabilities(
            emissions[row : row + 1, :n],
            mask[row : row + 1, :n],
            paths[row : row + 1, :n],
            torch.tensor([[0, start, end]]),
            scores,
            tables,
        )
        torch.testing.assert_close(one[0], batched[i])
    assert span_log_probabilities(emissions, mask, paths, flat[:0], scores, tables).shape == (0,)


@pytest.mark.slow
def test_span_confidences_of_a_20000_token_sentence():
    # Every token a one-token B-PER span: 20,000 spans. The former formula needed one copy of
    # the sentence per span, about spans x tokens x tags floats (8 GB here).
    encoder, _ = _ner_encoder("BIO")
    tagger = _tagger(encoder)
    b_per = tagger.labels.index("B-PER")
    with torch.no_grad():
        tagger.model.projection.weight.zero_()
        tagger.model.projection.bias.zero_()
        tagger.model.projection.bias[b_per] = 4.0
    n = 20_000
    (result,) = tagger.predict([["EU"] * n])
    assert len(result.spans) == n
    assert all(0.0 < s.confidence <= result.confidences[s.start] + 1e-6 for s in result.spans)
    middle = {s.confidence for s in result.spans[100:-100]}
    assert max(middle) - min(middle) < 1e-5  # a stationary chain: the same value throughout


# ---------------------------------------------------------------- streaming prediction


def _ner_encoder(scheme: str = "BIOES") -> tuple[SentenceEncoder, list]:
    sentences = read_columns(FIXTURES / "train.conll")
    words = Vocabulary.build(t for s in sentences for t in s.tokens)
    chars = Vocabulary.build(c for s in sentences for t in s.tokens for c in t)
    types = {label[2:] for s in sentences for label in s.labels if label != "O"}
    tags = Vocabulary(span_tag_inventory(types, scheme))
    return SentenceEncoder(words, chars, tags, scheme=scheme, original_scheme="IOB1"), sentences


def _tagger(encoder: SentenceEncoder) -> SequenceTagger:
    torch.manual_seed(0)
    return SequenceTagger(
        labels=encoder.tags.itos,
        num_words=len(encoder.words),
        num_chars=len(encoder.chars),
        embeddings=EMBEDDINGS,
        encoder=ENCODER,
        scheme=encoder.scheme,
        original_scheme=encoder.original_scheme,
        optimizer={"_target_": "torch.optim.Adam", "lr": 0.05},
        vocab=encoder.to_dict(),
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny tagger trained for a few steps on the NER fixture, saved as a bundle."""
    encoder, sentences = _ner_encoder()
    tagger = _tagger(encoder)
    items = [
        {**encoder.encode(s.tokens, s.labels), "tokens": s.tokens, "index": i}
        for i, s in enumerate(sentences[:16])
    ]
    batch = collate(items)
    optimizer = tagger.configure_optimizers()
    for _ in range(10):
        optimizer.zero_grad()
        tagger.model.loss(tagger(batch), batch["tags"], batch["mask"]).backward()
        optimizer.step()
    tagger.eval()
    return tagger.save_bundle(tmp_path_factory.mktemp("model") / "bundle")


def compose_predict(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="predict", overrides=overrides)


ODD_LINES = "a\x0bb c\x85d\u2028e\rf g\x0ch\x1ci\x1dj\x1ek\u2029l\r\nsecond\u2028line \r tail\n"


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_each_input_line_is_one_record_whatever_other_separators_it_holds(
    bundle, tmp_path, monkeypatch, capsys, source
):
    lines = [line.removesuffix("\r") for line in ODD_LINES.split("\n")[:-1]]
    assert len(lines) == 2 and len(ODD_LINES.splitlines()) > 2
    data = ODD_LINES.encode("utf-8")
    if source == "file":
        (tmp_path / "odd.txt").write_bytes(data)
        cfg = compose_predict([f"ckpt_path={bundle}", f"input={tmp_path / 'odd.txt'}"])
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        cfg = compose_predict([f"ckpt_path={bundle}", "input=-"])
    summary = predict(cfg)
    records = [json.loads(line) for line in capsys.readouterr().out.split("\n") if line]
    assert [r["tokens"] for r in records] == [line.split() for line in lines]
    assert (summary.sentences, summary.tokens) == (2, sum(len(line.split()) for line in lines))


def test_latin1_text_input_still_reads_with_the_encoding_option(bundle, tmp_path, capsys):
    (tmp_path / "latin.txt").write_bytes("Müller visited Zürich .\n\nEU\n".encode("latin-1"))
    cfg = compose_predict(
        [f"ckpt_path={bundle}", f"input={tmp_path / 'latin.txt'}", "encoding=latin-1"]
    )
    predict(cfg)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in records] == [["Müller", "visited", "Zürich", "."], [], ["EU"]]


@pytest.mark.slow
def test_20000_lines_stream_through_in_order(bundle, tmp_path):
    lines = [" ".join(f"w{i}" for i in range(k % 5)) + f" x{k}" for k in range(20_000)]
    lines[7] = ""  # an empty sentence keeps its place
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n")
    output = tmp_path / "many.jsonl"
    cfg = compose_predict(
        [
            f"ckpt_path={bundle}",
            f"input={tmp_path / 'many.txt'}",
            f"output={output}",
            "chunk_size=3000",
            "batch_size=256",
        ]
    )
    summary = predict(cfg)
    with output.open() as handle:
        tokens = [json.loads(line)["tokens"] for line in handle]
    assert tokens == [line.split() for line in lines]
    assert summary.sentences == 20_000


def test_stdout_receives_finished_chunks_before_a_later_error(bundle, monkeypatch, capsys):
    # Undecodable bytes far into stdin: the chunks before them are already written, each
    # record a whole line; a file output would be left untouched (atomic).
    data = "".join(f"s{k} t\n" for k in range(6000)).encode() + b"\xff\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    cfg = compose_predict([f"ckpt_path={bundle}", "chunk_size=500"])
    with pytest.raises(ValueError, match=r"^stdin:6001: bytes b'\\xff' cannot be decoded"):
        predict(cfg)
    out = capsys.readouterr().out
    assert out.endswith("\n")
    records = [json.loads(line) for line in out.splitlines()]
    assert records and len(records) % 500 == 0
    assert [r["tokens"] for r in records] == [[f"s{k}", "t"] for k in range(len(records))]


def test_predict_iter_reads_its_input_one_chunk_at_a_time(bundle):
    tagger = SequenceTagger.load(bundle)

    def sentences():
        for k in range(16):
            yield "EU rejects " * (k % 3) + f"call{k}"
        raise RuntimeError("read past the first chunk")

    got = []
    with pytest.raises(RuntimeError, match="past the first chunk"):
        for tagged in tagger.predict_iter(sentences(), batch_size=5, chunk_size=16):
            got.append(tagged)
    assert [r.tokens[-1] for r in got] == [f"call{k}" for k in range(16)]


def test_predict_iter_gives_what_predict_gives(bundle):
    tagger = SequenceTagger.load(bundle)
    sentences = [s.tokens for s in read_columns(FIXTURES / "dev.conll")] + [[]]
    whole = tagger.predict(sentences, batch_size=4)
    for chunk_size in (1, 3, 1000):
        chunked = list(tagger.predict_iter(iter(sentences), batch_size=4, chunk_size=chunk_size))
        assert [r.tokens for r in chunked] == [r.tokens for r in whole]
        assert [r.tags for r in chunked] == [r.tags for r in whole]
        for a, b in zip(chunked, whole):
            assert a.confidences == pytest.approx(b.confidences, abs=1e-5)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive int; got 0"),
        ({"batch_size": 0}, "batch_size must be a positive int; got 0"),
        ({"chunk_size": True}, "chunk_size must be a positive int; got True"),
    ],
)
def test_predict_iter_checks_its_arguments_at_the_call(bundle, arguments, match):
    tagger = SequenceTagger.load(bundle)
    with pytest.raises(ValueError, match=match):
        tagger.predict_iter(iter([]), **arguments)  # no iteration needed
    with pytest.raises(TypeError, match="got a single string"):
        tagger.predict_iter("EU rejects German call .")


def test_chunk_size_is_checked(bundle, tmp_path):
    cfg = compose_predict([f"ckpt_path={bundle}", f"input={FIXTURES / 'raw.txt'}", "chunk_size=0"])
    with pytest.raises(ValueError, match="chunk_size must be >= 1; got 0"):
        predict(cfg)


def test_unwritable_output_is_one_clear_error_naming_the_path(bundle, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file\n")
    for output in (blocker / "tags.jsonl", blocker / "sub" / "tags.jsonl", tmp_path):
        cfg = compose_predict(
            [f"ckpt_path={bundle}", f"input={FIXTURES / 'raw.txt'}", f"output={output}"]
        )
        with pytest.raises(OSError, match=f"^cannot write output {re.escape(str(output))}: ") as e:
            predict(cfg)
        assert "\n" not in str(e.value)
    assert blocker.read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_conll_output_is_written_chunk_by_chunk_with_its_gold_column(bundle, tmp_path):
    output = tmp_path / "dev.out.conll"
    cfg = compose_predict(
        [
            f"ckpt_path={bundle}",
            f"input={FIXTURES / 'dev.conll'}",
            "output_format=conll",
            f"output={output}",
            "chunk_size=2",
        ]
    )
    summary = predict(cfg)
    gold = read_columns(FIXTURES / "dev.conll")
    blocks = [b.splitlines() for b in output.read_text().strip().split("\n\n")]
    assert len(blocks) == len(gold) == summary.sentences
    direct = SequenceTagger.load(bundle).predict([s.tokens for s in gold])
    for block, sentence, tagged in zip(blocks, gold, direct):
        rows = [line.split() for line in block]
        assert [r[0] for r in rows] == sentence.tokens
        assert [r[1] for r in rows] == sentence.labels
        assert [r[2] for r in rows] == tagged.tags
    assert summary.tokens == sum(len(s.tokens) for s in gold)


def test_a_raw_text_line_over_max_line_chars_names_its_line(bundle, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("EU rejects German call .\n" + "x " * 40 + "\nPeter Blackburn\n")
    cfg = compose_predict(
        [
            f"ckpt_path={bundle}",
            f"input={source}",
            f"output={tmp_path / 'out.jsonl'}",
            "max_line_chars=50",
        ]
    )
    with pytest.raises(ValueError, match=f"{source}:2: line is longer than 50 characters"):
        predict(cfg)
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- bounded work, checked input


def test_max_line_chars_counts_a_line_without_its_line_end(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"abcde\r\nfghij\n")
    assert list(text_lines(str(source), max_line_chars=5)) == ["abcde", "fghij"]
    source.write_bytes(b"ok\nabcde\r\r\nxy\n")  # line 2 is "abcde\r": 6 characters
    with pytest.raises(ValueError, match=f"{re.escape(str(source))}:2: line is longer than 5 "):
        list(text_lines(str(source), max_line_chars=5))
    assert list(text_lines(str(source), max_line_chars=6)) == ["ok", "abcde\r", "xy"]


@pytest.fixture(scope="module")
def loaded(bundle):
    return SequenceTagger.load(bundle)


@pytest.mark.parametrize(
    ("sentences", "match"),
    [
        ([b"EU rejects"], r"sentence 0 must be a str \(raw text\) or a sequence of str tokens; "),
        ([["EU"], {"tokens": ["EU"]}], r"sentence 1 must be .*; got dict \{'tokens'"),
        ([["EU"], None], r"sentence 1 must be .*; got NoneType None$"),
        ([["EU", None, "call"]], r"^sentence 0, token 1 must be a str; got NoneType None$"),
        ([["EU", 3]], r"^sentence 0, token 1 must be a str; got int 3$"),
        ([["EU", b"call"]], r"^sentence 0, token 1 must be a str; got bytes b'call'$"),
    ],
)
def test_sentences_that_are_not_text_or_str_tokens_are_refused(loaded, sentences, match):
    with pytest.raises(TypeError, match=match):
        loaded.predict(sentences)


def test_a_bad_sentence_in_a_stream_is_named_by_its_place_in_the_stream(loaded):
    stream = loaded.predict_iter(iter([["EU"], ["call"], ["lamb"], ["x", 7]]), chunk_size=2)
    assert len(list(itertools.islice(stream, 2))) == 2
    with pytest.raises(TypeError, match=r"^sentence 3, token 1 must be a str; got int 7$"):
        next(stream)


def test_top_k_over_its_maximum_is_refused_naming_it(loaded, tmp_path):
    with pytest.raises(ValueError, match=r"^top_k must be at most 1000 .*; got 1001$"):
        loaded.predict([["EU", "rejects"]], top_k=1001)
    (tagged,) = loaded.predict([["EU"]], top_k=1000)  # more than the taggings: all of them
    assert 1 < len(tagged.alternatives) <= len(loaded.labels)
    assert sum(a["probability"] for a in tagged.alternatives) == pytest.approx(1.0, abs=1e-6)
    cfg = compose_predict([f"ckpt_path={tmp_path / 'not_loaded'}", "top_k=1000000"])
    with pytest.raises(ValueError, match=r"^top_k must be at most 1000 .*; got 1000000$"):
        predict(cfg)  # before the model is loaded
