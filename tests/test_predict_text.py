"""Text in, text out: the tokenizers (spaCy's rule-based English tokenizer and the whitespace
rule) with character offsets, offsets and original substrings in the results, top-k taggings
with their probabilities (checked against brute-force enumeration), and ``chaincrf-predict``'s
``tokenizer`` and ``top_k`` options, progress display and tokens/s log line."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chaincrf.cli.predict import predict, show_progress
from chaincrf.predict.predictor import Predictor
from chaincrf.predict.tokenizers import (
    MAX_RUN_CHARS,
    TOKENIZERS,
    SpacyTokenizer,
    WhitespaceTokenizer,
    get_tokenizer,
)
from chaincrf.tagger import SequenceTagger, TaggedSentence, tokenize
from test_predict_bounded import EMBEDDINGS, ENCODER, _ner_encoder, _tagger, compose_predict

pytestmark = pytest.mark.usefixtures("one_thread")

TRICKY = [
    "EU rejects German call.",
    "U.S. officials don't  agree, Mr. Smith said.",
    "  leading\tand trailing\t \t",
    "Müller visited Zürich — “quoted” 😀x (really)!",
    "a\x0bb c\x85d\u2028e\rf g\x0ch\x1ci\x1dj\x1ek\u2029l\xa0m",
    "e-mail: ann@example.com, http://example.com/a?b=1 3.5km $20",
    "",
    " \t ",
]


# ---------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("line", TRICKY)
def test_offsets_point_at_the_tokens_in_the_line(name, line):
    tokens, offsets = get_tokenizer(name).tokenize(line)
    assert len(tokens) == len(offsets)
    assert [line[a:b] for a, b in offsets] == tokens
    assert all(token and not any(c.isspace() for c in token) for token in tokens)
    ends = [0] + [b for _, b in offsets]
    assert all(a >= end for (a, _), end in zip(offsets, ends))  # in order, no overlap
    # every non-whitespace character is in exactly one token
    covered = "".join(line[a:b] for a, b in offsets)
    assert covered == "".join(line.split())


@pytest.mark.parametrize("line", TRICKY)
def test_the_whitespace_tokenizer_is_str_split(line):
    assert WhitespaceTokenizer().tokenize(line).tokens == line.split() == tokenize(line)


def test_spacy_splits_punctuation_and_contractions_but_keeps_abbreviations():
    spacy_tokens = get_tokenizer("spacy").tokenize(TRICKY[1]).tokens
    assert spacy_tokens == [
        "U.S.", "officials", "do", "n't", "agree", ",", "Mr.", "Smith", "said", ".",
    ]  # fmt: skip
    assert get_tokenizer("spacy").tokenize("EU rejects German call.") == (
        ["EU", "rejects", "German", "call", "."],
        [(0, 2), (3, 10), (11, 17), (18, 22), (22, 23)],
    )
    assert get_tokenizer("whitespace").tokenize("EU rejects German call.").tokens[-1] == "call."
    assert get_tokenizer("spacy").tokenize("x  \t  y").tokens == ["x", "y"]  # no space tokens


@pytest.mark.parametrize("line", TRICKY)
def test_spacy_tokens_are_spacy_blank_english_tokens_without_whitespace(line):
    import spacy

    reference = [(t.text, t.idx) for t in spacy.blank("en").tokenizer(line) if not t.text.isspace()]
    tokens, offsets = get_tokenizer("spacy").tokenize(line)
    assert list(zip(tokens, [a for a, _ in offsets])) == reference


def test_a_long_line_is_tokenised_in_pieces_with_the_same_tokens():
    line = "  ".join(TRICKY) * 20 + "Mr. Smith's e-mail."
    whole = SpacyTokenizer().tokenize(line)
    for piece_chars in (1, 7, 50):
        assert SpacyTokenizer(piece_chars=piece_chars).tokenize(line) == whole
    assert len(whole.tokens) > 200


def test_a_run_over_max_run_chars_is_split_into_words_and_single_marks():
    run = '("' * 200 + "abc" + ")" * 100  # 503 non-space characters: spaCy takes ~0.2 s on it
    line = f"Mr. Smith's {run}  e-mail."
    tokens, offsets = SpacyTokenizer().tokenize(line)
    assert len(run) > MAX_RUN_CHARS
    head, tail = SpacyTokenizer().tokenize("Mr. Smith's"), SpacyTokenizer().tokenize("e-mail.")
    assert tokens == head.tokens + ["(", '"'] * 200 + ["abc"] + [")"] * 100 + tail.tokens
    assert [line[a:b] for a, b in offsets] == tokens
    # a run as long as max_run_chars is spaCy's, one character more is split by the regex
    assert SpacyTokenizer(max_run_chars=6).tokenize("((ab)) x") == SpacyTokenizer().tokenize(
        "((ab)) x"
    )
    split = SpacyTokenizer(max_run_chars=5).tokenize("((ab)) x").tokens
    assert split == ["(", "(", "ab", ")", ")", "x"]


@pytest.mark.timeout(20)  # spaCy alone takes 105 s: linear time, not a hang
def test_a_line_of_30000_closing_brackets_is_30000_tokens():
    tokens, offsets = SpacyTokenizer().tokenize(")" * 30_000)
    assert tokens == [")"] * 30_000 and offsets[-1] == (29_999, 30_000)


def test_spacy_keeps_no_strings_from_a_chunk():
    from chaincrf.predict.tokenizers import _spacy_english

    tokenizer = SpacyTokenizer()
    tokenizer.tokenize_lines(["warm up."])
    strings = len(_spacy_english().vocab.strings)
    lines = [f"qzx{k}a wvq{k}b, pfr{k}c." for k in range(2000)]  # 6000 new words
    assert len(tokenizer.tokenize_lines(lines)) == 2000
    assert len(_spacy_english().vocab.strings) == strings


def test_the_tokenizers_import_nothing_heavy_until_spacy_is_used():
    code = (
        "import sys\n"
        "from chaincrf.predict.tokenizers import get_tokenizer\n"
        "tokenizer = get_tokenizer('spacy')\n"
        "heavy = ('torch', 'lightning', 'pytorch_lightning', 'hydra', 'torchmetrics', 'seqeval',"
        " 'spacy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(get_tokenizer('whitespace').tokenize('call.').tokens, 'spacy' in sys.modules)\n"
        "print(tokenizer.tokenize('call.').tokens, 'spacy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "['call.'] False", "['call', '.'] True"]


def test_an_unknown_tokenizer_or_piece_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tokenizer must be one of \('spacy', 'whitespace'\); "):
        get_tokenizer("nltk")
    with pytest.raises(ValueError, match="got 'nltk'"):
        Predictor(None, None, None, tokenizer="nltk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="piece_chars must be a positive int; got 0"):
        SpacyTokenizer(piece_chars=0)
    with pytest.raises(ValueError, match="max_run_chars must be a positive int; got 0"):
        SpacyTokenizer(max_run_chars=0)


# ---------------------------------------------------------------- predictor: offsets


def _forced_tagger(tag: str) -> SequenceTagger:
    """An untrained NER tagger (BIOES, reported in IOB1) whose emissions favour ``tag`` at
    every token: ``S-PER`` makes every token a span, ``I-PER`` one span over the sentence."""
    encoder, _ = _ner_encoder()
    tagger = _tagger(encoder)
    with torch.no_grad():
        tagger.model.projection.weight.zero_()
        tagger.model.projection.bias.zero_()
        tagger.model.projection.bias[tagger.labels.index(tag)] = 8.0
    return tagger


def test_raw_text_results_carry_offsets_and_original_substrings():
    line = "  Peter   Blackburn visited Paris.\t"
    (tagged,) = _forced_tagger("I-PER").predict([line])
    assert tagged.tokens == ["Peter", "Blackburn", "visited", "Paris", "."]
    assert tagged.offsets == [(2, 7), (10, 19), (20, 27), (28, 33), (33, 34)]
    (span,) = tagged.spans  # B-PER I-PER ... E-PER under the BIOES constraints
    assert (span.start, span.end, span.start_char, span.end_char) == (0, 5, 2, 34)
    assert span.text == "Peter   Blackburn visited Paris."  # the line's own text
    singles = _forced_tagger("S-PER").predict([line])[0].spans
    assert [s.text for s in singles] == ["Peter", "Blackburn", "visited", "Paris", "."]
    assert [(s.start_char, s.end_char) for s in singles] == tagged.offsets


def test_token_lists_have_no_offsets_and_json_carries_the_new_fields():
    tagger = _forced_tagger("S-PER")
    pretokenised, empty, raw = tagger.predict([["Peter", "Blackburn"], "", "Peter  Blackburn"])
    assert pretokenised.offsets is None
    assert [(s.text, s.start_char, s.end_char) for s in pretokenised.spans] == [
        ("Peter", None, None),
        ("Blackburn", None, None),
    ]
    assert empty.offsets == [] and empty.tokens == []
    record = json.loads(json.dumps(raw.to_dict()))
    assert record == raw.to_dict()  # lists, not tuples
    assert record["offsets"] == [[0, 5], [7, 16]]
    assert record["spans"][1] == {
        "type": "PER",
        "start": 1,
        "end": 2,
        "text": "Blackburn",
        "confidence": record["spans"][1]["confidence"],
        "start_char": 7,
        "end_char": 16,
    }
    assert "alternatives" not in record
    assert pretokenised.to_dict()["offsets"] is None


def test_offsets_must_match_the_tokens():
    tagged = TaggedSentence(["EU", "rejects"], ["O", "O"], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"one \(start, end\) pair per token \(2\); got 1"):
        tagged.attach_offsets("EU rejects", [(0, 2)])
    assert tagged.offsets is None


def test_the_tokenizer_can_be_chosen_and_defaults_to_spacy():
    tagger = _forced_tagger("O")
    assert tagger.predictor.tokenizer.name == "spacy"
    assert tagger.predict(["call."])[0].tokens == ["call", "."]
    whitespace = Predictor(tagger.model, tagger.tags, tagger.vocab, tokenizer="whitespace")
    assert whitespace.predict(["call."])[0].tokens == ["call."]


# ---------------------------------------------------------------- predictor: top-k


@pytest.fixture(scope="module")
def random_crf_tagger() -> SequenceTagger:
    """An untrained NER tagger with large random CRF scores: distinct path probabilities."""
    encoder, _ = _ner_encoder()
    tagger = _tagger(encoder)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in tagger.model.crf.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return tagger


def test_top_k_alternatives_are_best_first_with_their_probabilities(random_crf_tagger):
    predictor = random_crf_tagger.predictor
    lines = ["EU rejects German call to boycott British lamb.", "Peter", ""]
    results = predictor.predict(lines, top_k=6)
    plain = predictor.predict(lines)
    for tagged, one in zip(results, plain):
        alternatives = tagged.alternatives
        assert 1 <= len(alternatives) <= 6
        assert alternatives[0]["tags"] == tagged.tags == one.tags
        probabilities = [a["probability"] for a in alternatives]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 < p <= 1.0 for p in probabilities)
        assert sum(probabilities) <= 1 + 1e-6
        assert all(len(a["tags"]) == len(tagged.tokens) for a in alternatives)
        assert len({tuple(a["tags"]) for a in alternatives}) == len(alternatives)  # distinct
    assert len(results[0].alternatives) == 6
    assert results[2].alternatives == [{"tags": [], "probability": 1.0}]
    record = json.loads(json.dumps(results[0].to_dict()))
    assert record["alternatives"] == results[0].alternatives


def _brute_force(predictor: Predictor, tokens: list[str]) -> list[tuple[tuple[str, ...], float]]:
    """Every allowed tagging of ``tokens`` with its probability, by enumeration: the CRF's own
    parameters, nothing else of it."""
    batch = predictor.encode([tokens])
    with torch.no_grad():
        emissions = predictor.model.emissions(batch)[0].double()  # (T, K)
    crf = predictor.model.crf
    start, end = crf.start_transitions.detach().double(), crf.end_transitions.detach().double()
    transitions = crf.transitions.detach().double()
    T, K = emissions.shape
    scores = {}
    for path in itertools.product(range(K), repeat=T):
        allowed = bool(crf.start_allowed[path[0]]) and bool(crf.end_allowed[path[-1]])
        allowed = allowed and all(
            bool(crf.transitions_allowed[a, b]) for a, b in itertools.pairwise(path)
        )
        if not allowed:
            continue
        score = start[path[0]] + end[path[-1]] + sum(emissions[t, y] for t, y in enumerate(path))
        score = score + sum(transitions[a, b] for a, b in itertools.pairwise(path))
        scores[path] = float(score)
    log_z = float(torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), 0))
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    return [
        (tuple(predictor.tags.decode(path, original=True)), math.exp(s - log_z))
        for path, s in ranked
    ]


@pytest.mark.parametrize("tokens", [["Peter"], ["EU", "rejects"]])
def test_top_k_with_every_tagging_equals_brute_force_and_sums_to_one(random_crf_tagger, tokens):
    predictor = random_crf_tagger.predictor
    K = len(random_crf_tagger.labels)
    expected = _brute_force(predictor, tokens)
    assert 1 < len(expected) < K ** len(tokens)  # the BIOES constraints forbid some
    (tagged,) = predictor.predict([tokens], top_k=K ** len(tokens))
    got = [(tuple(a["tags"]), a["probability"]) for a in tagged.alternatives]
    assert len(got) == len(expected)
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-9)
    assert {t: round(p, 9) for t, p in got} == {t: round(p, 9) for t, p in expected}
    assert sum(p for _, p in got) == pytest.approx(1.0, abs=1e-9)


def test_top_k_streams_as_predict_gives(random_crf_tagger):
    predictor = random_crf_tagger.predictor
    lines = ["Peter visited Paris.", "", "EU rejects lamb.", "Mary"] * 3
    whole = predictor.predict(lines, top_k=3)
    streamed = list(predictor.predict_iter(iter(lines), batch_size=2, chunk_size=5, top_k=3))
    assert len(streamed) == len(whole) == len(lines)
    for a, b in zip(streamed, whole):  # other batches: the same up to rounding
        assert (a.tokens, a.tags, a.offsets) == (b.tokens, b.tags, b.offsets)
        assert [x["tags"] for x in a.alternatives] == [x["tags"] for x in b.alternatives]
        assert [x["probability"] for x in a.alternatives] == pytest.approx(
            [x["probability"] for x in b.alternatives], rel=1e-4
        )


@pytest.mark.parametrize("top_k", [0, -1, True, 1.5, "2"])
def test_a_bad_top_k_is_a_clear_error_at_the_call(random_crf_tagger, top_k):
    with pytest.raises(ValueError, match=re.escape(f"top_k must be a positive int; got {top_k!r}")):
        random_crf_tagger.predictor.predict_iter(iter([]), top_k=top_k)


def test_top_k_without_a_crf_is_a_clear_error():
    encoder, _ = _ner_encoder()
    tagger = SequenceTagger(
        labels=encoder.tags.itos,
        num_words=len(encoder.words),
        num_chars=len(encoder.chars),
        embeddings=EMBEDDINGS,
        encoder=ENCODER,
        scheme=encoder.scheme,
        original_scheme=encoder.original_scheme,
        use_crf=False,
        vocab=encoder.to_dict(),
    )
    with pytest.raises(ValueError, match=r"top_k > 1 needs a CRF output layer.*got top_k=2"):
        tagger.predictor.predict(["EU rejects lamb."], top_k=2)
    (tagged,) = tagger.predictor.predict(["EU rejects lamb."], top_k=1)
    assert tagged.tokens == ["EU", "rejects", "lamb", "."] and tagged.alternatives == []


# ---------------------------------------------------------------- chaincrf-predict


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, random_crf_tagger) -> Path:
    return random_crf_tagger.save_bundle(tmp_path_factory.mktemp("model") / "bundle")


LINES = [
    "EU rejects German call.",
    "Peter  Blackburn visited U.S. lamb farms, didn't he?",
    "",
    "a\x0bb c\x85d\u2028e\rf.",
]


def _run(bundle: Path, tmp_path: Path, *overrides: str) -> tuple[list[dict], object]:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8", newline="\n")
    output = tmp_path / "out.jsonl"
    cfg = compose_predict(
        [f"ckpt_path={bundle}", f"input={source}", f"output={output}", *overrides]
    )
    summary = predict(cfg)
    with output.open(encoding="utf-8", newline="\n") as handle:
        return [json.loads(line) for line in handle], summary


def test_cli_whitespace_tokenizer_reproduces_the_former_token_lists(bundle, tmp_path):
    records, summary = _run(bundle, tmp_path, "tokenizer=whitespace")
    assert [r["tokens"] for r in records] == [line.split() for line in LINES]
    assert summary.tokens == sum(len(line.split()) for line in LINES)
    spacy_records, _ = _run(bundle, tmp_path, "tokenizer=spacy")
    assert spacy_records[0]["tokens"] == ["EU", "rejects", "German", "call", "."]
    assert "n't" in spacy_records[1]["tokens"] and "U.S." in spacy_records[1]["tokens"]
    assert len(spacy_records) == len(LINES)  # still one record per line
    for line, record in zip(LINES, records):
        assert [line[a:b] for a, b in record["offsets"]] == record["tokens"]
    for line, record in zip(LINES, spacy_records):
        assert [line[a:b] for a, b in record["offsets"]] == record["tokens"]
        for span in record["spans"]:
            assert span["text"] == line[span["start_char"] : span["end_char"]]


def test_cli_top_k_adds_alternatives(bundle, tmp_path):
    records, _ = _run(bundle, tmp_path, "top_k=3")
    for record in records:
        alternatives = record["alternatives"]
        assert 1 <= len(alternatives) <= 3 and alternatives[0]["tags"] == record["tags"]
    assert len(records[0]["alternatives"]) == 3


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("tokenizer=nltk", r"tokenizer must be one of \('spacy', 'whitespace'\); got 'nltk'"),
        ("top_k=0", "top_k must be >= 1; got 0"),
    ],
)
def test_cli_bad_tokenizer_or_top_k_fails_before_writing(bundle, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        _run(bundle, tmp_path, override)
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_logs_sentences_tokens_and_tokens_per_second(bundle, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="chaincrf.predict")
    _, summary = _run(bundle, tmp_path)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "chaincrf.predict"]
    match = re.fullmatch(r"tagged (\d+) sentences, (\d+) tokens in ([\d.]+) s \((\d+) tokens/s\)",
                         message)  # fmt: skip
    assert match, message
    assert int(match[1]) == summary.sentences == len(LINES)
    assert int(match[2]) == summary.tokens > 0
    assert summary.seconds > 0
    assert int(match[4]) == pytest.approx(summary.tokens / summary.seconds, rel=0.01, abs=1)
    assert capsys.readouterr().err == ""  # no progress display when stderr is not a terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_shows_progress_on_a_terminal_stderr(bundle, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert show_progress(str(tmp_path / "out.jsonl"))
    _, summary = _run(bundle, tmp_path)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert f"tagging {summary.sentences} lines, {summary.tokens} tokens" in shown
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert not show_progress("-")  # records going to the same terminal: no display
