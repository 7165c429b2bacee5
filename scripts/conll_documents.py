"""Write a CoNLL column file with each document as one "sentence" (document-level context).

Used for the document-level experiment in benchmarks/accuracy.md: the tagger then reads a whole
``-DOCSTART-`` block as one sequence, so the BiLSTM sees the neighbouring sentences. Labels are
unchanged; score the predictions per original sentence with ``--rescore``.

    python3 scripts/conll_documents.py ../shared/data/conll2003/eng.train /tmp/doc/eng.train
    python3 scripts/conll_documents.py --rescore CKPT /tmp/doc/eng.testb ../shared/data/conll2003/eng.testb
"""

from __future__ import annotations

import argparse
from pathlib import Path


def merge(source: Path, target: Path) -> int:
    """Copy ``source`` to ``target`` without the blank lines inside documents; return #documents."""
    out: list[str] = []
    current: list[str] = []
    documents = 0

    def flush() -> None:
        nonlocal current, documents
        if current:
            out.extend(current)
            out.append("")
            documents += 1
        current = []

    for line in source.read_text(encoding="utf-8").split("\n"):
        if line.startswith("-DOCSTART-"):
            flush()
            out.extend([line, ""])
        elif line.strip():
            current.append(line)
    flush()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    return documents


def rescore(checkpoint: str, merged: Path, original: Path, label_column: int = -1) -> float:
    """Span F1 (seqeval) of a document-level model, scored per original sentence."""
    from seqeval.metrics import f1_score

    from chaincrf.data import read_columns
    from chaincrf.tagger import SequenceTagger

    tagger = SequenceTagger.load(checkpoint)
    documents = read_columns(merged, label_column=label_column)
    sentences = read_columns(original, label_column=label_column)
    tags = [tag for r in tagger.predict([d.tokens for d in documents]) for tag in r.tags]
    if len(tags) != sum(len(s) for s in sentences):
        raise ValueError(f"{merged} and {original} hold different numbers of tokens")
    predicted, offset = [], 0
    for sentence in sentences:
        predicted.append(tags[offset : offset + len(sentence)])
        offset += len(sentence)
    return f1_score([s.labels for s in sentences], predicted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rescore", metavar="CKPT", help="score CKPT on MERGED, per ORIGINAL sentence"
    )
    parser.add_argument(
        "source", type=Path, help="a CoNLL file (or, with --rescore, the merged one)"
    )
    parser.add_argument(
        "target", type=Path, help="the merged file (or, with --rescore, the original)"
    )
    args = parser.parse_args()
    if args.rescore:
        print(f"per-sentence span F1: {100 * rescore(args.rescore, args.source, args.target):.2f}")
    else:
        print(f"{merge(args.source, args.target)} documents -> {args.target}")


if __name__ == "__main__":
    main()
