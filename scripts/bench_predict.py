"""Prediction throughput and accuracy of the serving artefacts on CoNLL-2003 dev.

One trained checkpoint (``--model``, e.g. ``experiment=conll2003_ner``: word 100 + character
CNN 30 + BiLSTM 200 + CRF) is exported to TorchScript, ONNX and int8 ONNX in a temporary
folder, and each engine tags all of ``eng.testa`` in the same process, with ``--threads``
intra-op threads each, timed side by side by ``scripts/benchtools.py`` (the machine is shared
and noisy): a warm-up pass, then ``--rounds`` rounds in which every engine makes one pass, in
balanced orders; tokens/s is dev's tokens over an engine's median pass:

- ``plain loop``: the plain PyTorch + pytorch-crf network of ``scripts/bench_train.py`` (same
  sizes, random weights: speed does not depend on them), batches of 32 random sentences padded
  to the longest, ``emissions`` + ``torchcrf.CRF.decode``;
- ``eager``: chaincrf's network in PyTorch (``Predictor.model``): emissions, Viterbi and the
  marginals, on length-sorted batches of ``--batch-size`` (and ``tags only``: emissions and
  Viterbi, the plain loop's work);
- ``torchscript``, ``onnxruntime``, ``onnxruntime int8``: the exported graph (the same work:
  tags and each tag's marginal) on the same batches.

Model rows time encoded batches -> tags (ids prepared before the clock, as the baseline's);
``end to end`` rows time ``Predictor.predict`` / ``OnnxPredictor.predict`` from token lists to
``TaggedSentence`` records (encoding, spans, confidences included). Span F1 on dev (seqeval,
the corpus's IOB1 labels) is given for each chaincrf engine.

Usage::

    CHAINCRF_DATA=../shared/data python scripts/bench_predict.py --model run/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchtools
from bench_train import Baseline, data_root  # the plain loop, as bench_train's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained CoNLL-2003 checkpoint/bundle")
    parser.add_argument(
        "--data-root", default=None, help="default: $CHAINCRF_DATA or ../shared/data"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="chaincrf's batches")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--profile", action="store_true", help="also print where eager emissions spend their time"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = data_root(args.data_root)
    dev_file = root / "conll2003" / "eng.testa"
    if not dev_file.is_file():
        print(f"CoNLL-2003 not found under {root}: pass --data-root", file=sys.stderr)
        return 2

    from seqeval.metrics import f1_score

    from chaincrf.cli.export import export
    from chaincrf.data.readers import read_columns
    from chaincrf.predict.bundle import load_predictor
    from chaincrf.predict.export import graph_inputs
    from chaincrf.predict.onnx_predictor import OnnxPredictor

    dev = read_columns(dev_file, label_column=-1)
    sentences = [list(s.tokens) for s in dev if s.tokens]
    gold = [list(s.labels) for s in dev if s.tokens]
    n_tokens = sum(map(len, sentences))
    predictor = load_predictor(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict."))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folders = {
            "torchscript": export(args.model, tmp / "ts", fmt="torchscript"),
            "onnx": export(args.model, tmp / "onnx", fmt="onnx"),
            "int8": export(args.model, tmp / "int8", fmt="onnx", quantize="int8"),
        }
    scripted = torch.jit.load(str(folders["torchscript"] / "model.pt"))
    onnx_predictors = {
        name: OnnxPredictor(folders[name], threads=args.threads) for name in ("onnx", "int8")
    }

    # encoded batches, prepared before the clock (length-sorted, as the predictor batches)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    torch_batches, numpy_batches = [], []
    for lo in range(0, len(order), args.batch_size):
        rows = [sentences[i] for i in order[lo : lo + args.batch_size]]
        batch = predictor.encode(rows)
        torch_batches.append(batch)
        numpy_batches.append(onnx_predictors["onnx"].encode(rows))
    num_features = len(predictor.sentence_encoder.features)

    encoder = predictor.sentence_encoder
    baseline = Baseline(len(encoder.words), len(encoder.chars), len(predictor.tags.labels)).eval()
    rng = random.Random(0)
    shuffled = sentences[:]
    rng.shuffle(shuffled)
    baseline_batches = []
    for lo in range(0, len(shuffled), 32):  # the plain way: random batches of 32, padded
        rows = shuffled[lo : lo + 32]
        batch = predictor.encode(rows)
        baseline_batches.append((batch["words"], batch["chars"], batch["mask"]))

    @torch.inference_mode()
    def plain_loop() -> None:
        for words, chars, mask in baseline_batches:
            baseline.crf.decode(baseline.emissions(words, chars), mask)

    @torch.inference_mode()
    def eager_tags() -> None:
        model = predictor.model
        for batch in torch_batches:
            model.decode(model.emissions(batch), batch["mask"])

    @torch.inference_mode()
    def eager() -> None:
        model = predictor.model
        for batch in torch_batches:
            emissions = model.emissions(batch)
            model.decode(emissions, batch["mask"])
            model.marginals(emissions, batch["mask"])

    @torch.inference_mode()
    def torchscript() -> None:
        for batch in torch_batches:
            scripted(*graph_inputs(batch, num_features))

    def onnxruntime(name: str):
        session = onnx_predictors[name].session
        names = onnx_predictors[name].input_names

        def run() -> None:
            for arrays in numpy_batches:
                session.run(None, {n: arrays[n] for n in names})

        return run

    model_rows = {
        "plain PyTorch + pytorch-crf loop (batches of 32)": plain_loop,
        "chaincrf eager PyTorch, tags only": eager_tags,
        "chaincrf eager PyTorch": eager,
        "chaincrf TorchScript": torchscript,
        "chaincrf ONNX Runtime": onnxruntime("onnx"),
        "chaincrf ONNX Runtime int8": onnxruntime("int8"),
    }
    end_to_end = {
        "end to end: Predictor.predict (PyTorch)": lambda: predictor.predict(
            sentences, batch_size=args.batch_size
        ),
        "end to end: OnnxPredictor.predict": lambda: onnx_predictors["onnx"].predict(
            sentences, batch_size=args.batch_size
        ),
        "end to end: OnnxPredictor.predict, int8": lambda: onnx_predictors["int8"].predict(
            sentences, batch_size=args.batch_size
        ),
    }
    rows = {**model_rows, **end_to_end}
    # the warm-up pass loads kernels and initialises the sessions
    times = benchtools.time_entries(
        rows, inner=1, min_reps=args.rounds, max_reps=args.rounds, budget_s=math.inf
    )
    seconds = {name: t["median_s"] for name, t in times.items()}

    scores = {
        "chaincrf eager PyTorch": f1_score(gold, [t.tags for t in end_to_end[
            "end to end: Predictor.predict (PyTorch)"]()]),
        "chaincrf ONNX Runtime": f1_score(gold, [t.tags for t in end_to_end[
            "end to end: OnnxPredictor.predict"]()]),
        "chaincrf ONNX Runtime int8": f1_score(gold, [t.tags for t in end_to_end[
            "end to end: OnnxPredictor.predict, int8"]()]),
    }  # fmt: skip
    with torch.inference_mode():
        ts_tags = []
        for batch in torch_batches:
            tags, _ = scripted(*graph_inputs(batch, num_features))
            ts_tags.extend(predictor.tags.decode_batch(tags, batch["mask"]))
    ts_by_row = dict(zip(order, (predictor.tags.to_original(t) for t in ts_tags)))
    scores["chaincrf TorchScript"] = f1_score(gold, [ts_by_row[i] for i in range(len(gold))])

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in torch_batches:
                predictor.model.emissions(batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    base = n_tokens / seconds["plain PyTorch + pytorch-crf loop (batches of 32)"]
    print(benchtools.machine_line(benchtools.machine(__file__, argv)))
    print(f"\nCoNLL-2003 dev: {len(sentences)} sentences, {n_tokens} tokens; {args.rounds} rounds, "
          f"{args.threads} thread(s); model {args.model}\n")  # fmt: skip
    print("| engine | tokens/s | vs plain loop | dev span F1 |")
    print("|---|---:|---:|---:|")
    for name in rows:
        rate = n_tokens / seconds[name]
        f1 = scores.get(name)
        f1_text = f"{100 * f1:.2f}" if f1 is not None else "–"
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {f1_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
