"""Training and prediction throughput: chaincrf's tagger vs a plain PyTorch BiLSTM-CRF loop.

Both sides run the same network on CoNLL-2003 in the same process, timed side by side round by
round by ``scripts/benchtools.py`` (the two sides alternate which goes first) so that machine
noise hits both alike; tokens/s is each side's real tokens over its seconds, all rounds summed:

- baseline: word embeddings (100) + character CNN (30 filters of width 3 over 30-d characters,
  max-pooled) + BiLSTM (200 per direction) + Linear + ``torchcrf.CRF`` (pytorch-crf), batches of
  32 random sentences padded to the longest (the LSTM and character CNN run over the padding);
- chaincrf: ``SequenceTagger`` (``TokenEmbedder`` char CNN + ``BiLSTMEncoder`` + ``chaincrf.CRF``
  with BIOES constraints) fed by ``TaggingDataModule``'s length-bucketed batches of 32 for
  training and, for prediction, length-sorted batches of ``--eval-batch-size`` sentences (128,
  the shipped ``data.eval_batch_size``; pass 32 for batches as small as the baseline's), taken in
  a shuffled order so that a partial pass samples sentences of every length.

Same optimiser (Adam, lr 1e-3; chaincrf uses the fused implementation it ships with in
``conf/optimizer/adam.yaml``, ``--plain-adam`` gives it the baseline's), same gradient clipping
(5.0), same tags (BIOES). Training
tokens/s counts real (unpadded) tokens per second of forward + backward + update, data path
included; prediction tokens/s counts real tokens per second of forward + Viterbi decoding in eval
mode. The chaincrf prediction path with marginals and span confidences (``SequenceTagger.predict``)
is reported too.

Usage::

    CHAINCRF_DATA=../shared/data python scripts/bench_train.py --batches 40 --rounds 3
    CHAINCRF_DATA=../shared/data python scripts/bench_train.py --eval-batch-size 32
    python scripts/bench_train.py --data-root /data --batches 0   # 0: whole epochs (slow)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools: a sibling
import benchtools


def data_root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("CHAINCRF_DATA"):
        return Path(os.environ["CHAINCRF_DATA"])
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class Baseline(nn.Module):
    """The article-style network, written as a plain PyTorch user would."""

    def __init__(self, num_words: int, num_chars: int, num_tags: int) -> None:
        super().__init__()
        import torchcrf

        self.word = nn.Embedding(num_words, 100, padding_idx=0)
        self.char = nn.Embedding(num_chars, 30, padding_idx=0)
        self.conv = nn.Conv1d(30, 30, 3, padding=1)
        self.lstm = nn.LSTM(130, 200, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.5)
        self.proj = nn.Linear(400, num_tags)
        self.crf = torchcrf.CRF(num_tags, batch_first=True)

    def emissions(self, words: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        B, T, C = chars.shape
        c = self.dropout(self.char(chars.view(B * T, C))).transpose(1, 2)  # (B*T, 30, C)
        c = self.conv(c).max(dim=2).values.view(B, T, -1)  # (B, T, 30)
        x = self.dropout(torch.cat([self.word(words), c], dim=-1))  # (B, T, 130)
        h, _ = self.lstm(x)  # (B, T, 400), padding included
        return self.proj(self.dropout(h))  # (B, T, K)


def baseline_batches(examples: list[dict], batch_size: int, rng: random.Random):
    """Endless random batches, padded the plain way."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for lo in range(0, len(order) - batch_size + 1, batch_size):
            items = [examples[i] for i in order[lo : lo + batch_size]]
            T = max(len(e["words"]) for e in items)
            C = max(len(c) for e in items for c in e["chars"])
            words = torch.zeros(len(items), T, dtype=torch.long)
            chars = torch.zeros(len(items), T, C, dtype=torch.long)
            tags = torch.zeros(len(items), T, dtype=torch.long)
            mask = torch.zeros(len(items), T, dtype=torch.bool)
            for b, e in enumerate(items):
                n = len(e["words"])
                words[b, :n] = torch.tensor(e["words"])
                tags[b, :n] = torch.tensor(e["tags"])
                mask[b, :n] = True
                for t, ids in enumerate(e["chars"]):
                    chars[b, t, : len(ids)] = torch.tensor(ids)
            yield {"words": words, "chars": chars, "tags": tags, "mask": mask}


def endless(loader):
    while True:
        yield from loader


def on_device(batches, device: torch.device):
    """The batches with their tensors on ``device`` (pinned and copied without blocking on CUDA:
    the copy is part of the timed step, as in a training loop)."""
    for batch in batches:
        if device.type == "cuda":
            batch = {
                k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }
        yield batch


def timed(steps: int, batches, step) -> tuple[float, int]:
    tokens = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        step(batch)
        tokens += int(batch["mask"].sum())
    return time.perf_counter() - start, tokens


class GpuSampler:
    """GPU utilisation (%) sampled every 0.1 s while active, by pynvml or ``nvidia-smi``; nothing
    on the CPU or when neither is there."""

    def __init__(self, device: torch.device) -> None:
        self.samples: dict[str, list[float]] = {}
        self.read = None
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            import shutil
            import subprocess

            if shutil.which("nvidia-smi"):
                command = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                           "--format=csv,noheader,nounits"]  # fmt: skip
                self.read = lambda: float(subprocess.run(command, capture_output=True,
                                                         text=True).stdout.split()[0])  # fmt: skip

    def during(self, key: str, run):
        """``run`` with utilisation sampled under ``key``."""
        if self.read is None:
            return run

        def sampled() -> None:
            import threading

            stop = threading.Event()
            out = self.samples.setdefault(key, [])

            def loop() -> None:
                while not stop.wait(0.1):
                    with contextlib.suppress(Exception):  # a failed read: a missing sample
                        out.append(self.read())

            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            try:
                run()
            finally:
                stop.set()
                thread.join()

        return sampled

    def mean(self, key: str) -> float | None:
        values = self.samples.get(key)
        return sum(values) / len(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-root", default=None, help="default: $CHAINCRF_DATA or ../shared/data"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--batches", type=int, default=40, help="training batches per round and side (0: one epoch)"
    )
    parser.add_argument(
        "--predict-batches",
        type=int,
        default=0,
        help="prediction batches of 32 per round for the baseline (0: all of dev); chaincrf "
        "predicts the same number of sentences, drawn from all of dev",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=128,
        help="chaincrf's prediction batch size (conf/data: eval_batch_size, 128); the baseline "
        "keeps --batch-size",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (same for both)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plain-adam",
        action="store_true",
        help="give chaincrf the baseline's unfused Adam instead of the shipped fused one",
    )
    parser.add_argument(
        "--crf-share",
        action="store_true",
        help="also time chaincrf's CRF alone on its own training and prediction batches, with "
        "each kernel forced, and report its share of a step",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:index]: both sides train and predict there (GPU utilisation sampled, "
        "peak memory reported)",
    )
    parser.add_argument(
        "--length-buckets",
        type=int,
        nargs="+",
        default=None,
        help="chaincrf's training batches padded to these lengths (data.length_buckets)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        help="chaincrf's training network through torch.compile (compile=true), optionally "
        "with a mode (e.g. reduce-overhead)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device is available", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = data_root(args.data_root)
    if not (root / "conll2003" / "eng.train").is_file():
        print(
            f"CoNLL-2003 not found under {root}: pass --data-root or set CHAINCRF_DATA",
            file=sys.stderr,
        )
        return 2

    from torch.utils.data import DataLoader

    from chaincrf.data import TaggingDataModule
    from chaincrf.data.batching import BucketBatchSampler, collate
    from chaincrf.tagger import SequenceTagger
    from chaincrf.training.callbacks import LossCheck

    datamodule = TaggingDataModule(
        root=str(root),
        train="conll2003/eng.train",
        dev="conll2003/eng.testa",
        scheme="BIOES",
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        length_buckets=args.length_buckets,
    )
    datamodule.setup("fit")
    train_examples = [
        datamodule.datasets["train"][i] for i in range(len(datamodule.datasets["train"]))
    ]
    dev_examples = [datamodule.datasets["dev"][i] for i in range(len(datamodule.datasets["dev"]))]
    n_train_batches = len(train_examples) // args.batch_size
    n_dev_batches = len(dev_examples) // args.batch_size
    train_steps = args.batches or n_train_batches
    predict_steps = args.predict_batches or n_dev_batches
    # chaincrf's dev batches are sorted by length: shuffle their order (seeded) so that a partial
    # pass samples all lengths, not the shortest sentences first
    dev_sampler = BucketBatchSampler(
        lengths=datamodule.datasets["dev"].lengths,
        batch_size=args.eval_batch_size,
        shuffle=True,
        bucket_factor=1 << 30,
        seed=args.seed,
    )
    dev_loader = DataLoader(
        datamodule.datasets["dev"], batch_sampler=dev_sampler, collate_fn=collate
    )
    tagger_predict_steps = max(1, round(predict_steps * args.batch_size / args.eval_batch_size))

    vocabs = datamodule.vocabs
    baseline = Baseline(len(vocabs["words"]), len(vocabs["chars"]), datamodule.num_tags)
    tagger = SequenceTagger.from_datamodule(
        datamodule,
        embeddings={
            "_target_": "chaincrf.network.embeddings.TokenEmbedder",
            "word_dim": 100,
            "char_encoder": "cnn",
            "char_dim": 30,
            "char_hidden": 30,
            "dropout": 0.5,
        },
        encoder={
            "_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder",
            "hidden_size": 200,
            "dropout": 0.5,
        },
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3},
    )
    parameters = {
        "baseline": sum(p.numel() for p in baseline.parameters()),
        "chaincrf": sum(p.numel() for p in tagger.model.parameters()),
    }
    baseline.to(device)
    tagger.to(device)
    baseline_opt = torch.optim.Adam(baseline.parameters(), lr=1e-3)
    # chaincrf as shipped (conf/optimizer/adam.yaml: fused Adam); --plain-adam for the same
    # (unfused) update on both sides
    tagger_opt = torch.optim.Adam(tagger.model.parameters(), lr=1e-3, fused=not args.plain_adam)

    def baseline_train(batch):
        baseline.train()
        baseline_opt.zero_grad()
        em = baseline.emissions(batch["words"], batch["chars"])
        loss = -baseline.crf(em, batch["tags"], batch["mask"], reduction="token_mean")
        loss.backward()
        nn.utils.clip_grad_norm_(baseline.parameters(), 5.0)
        baseline_opt.step()

    # as the tagger's training step: the CRF's input check (a host read) only where the
    # non-finite loss check reads every step's loss (the CPU); on a GPU both are deferred
    validate = LossCheck().steps_between_reads(device) == 1

    def eager_loss(tensors, validate=validate):
        em = tagger.model.emissions(tensors)
        return tagger.model.loss(em, tensors["tags"], tensors["mask"], validate=validate)

    network_loss = eager_loss
    if args.compile:  # as compile=true does (SequenceTagger.compile_training): the CRF's
        # checks off
        mode = None if args.compile == "default" else args.compile
        network_loss = torch.compile(functools.partial(eager_loss, validate=False), mode=mode)

    def tagger_train(batch):
        tagger.train()
        tagger_opt.zero_grad()
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "index"}
        loss = network_loss(tensors)
        loss.backward()
        nn.utils.clip_grad_norm_(tagger.model.parameters(), 5.0)
        tagger_opt.step()

    @torch.inference_mode()
    def baseline_predict(batch):
        baseline.eval()
        baseline.crf.decode(baseline.emissions(batch["words"], batch["chars"]), batch["mask"])

    @torch.inference_mode()
    def tagger_predict(batch):
        tagger.eval()
        tagger.model.decode(tagger.model.emissions(batch), batch["mask"])

    rng = random.Random(args.seed)
    sides = {
        "baseline": {
            "train": (
                on_device(baseline_batches(train_examples, args.batch_size, rng), device),
                baseline_train,
            ),
            "predict": (
                on_device(
                    baseline_batches(dev_examples, args.batch_size, random.Random(args.seed)),
                    device,
                ),
                baseline_predict,
            ),
        },
        "chaincrf": {
            "train": (on_device(endless(datamodule.train_dataloader()), device), tagger_train),
            "predict": (on_device(endless(dev_loader), device), tagger_predict),
        },
    }
    totals = {side: {"train": [0.0, 0], "predict": [0.0, 0]} for side in sides}
    for side in sides.values():  # warm-up
        for what in ("train", "predict"):
            batches, step = side[what]
            timed(args.warmup, batches, step)

    sampler = GpuSampler(device)
    peak_memory: dict[str, int] = {}

    def one_round(name: str, what: str):
        steps = train_steps
        if what == "predict":
            steps = predict_steps if name == "baseline" else tagger_predict_steps
        batches, step = sides[name][what]

        def run() -> None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            totals[name][what][1] += timed(steps, batches, step)[1]
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                peak_memory[f"{name}_{what}"] = max(peak, peak_memory.get(f"{name}_{what}", 0))

        return sampler.during(f"{name}_{what}", run)

    for what in ("train", "predict"):
        times = benchtools.time_entries(
            {name: one_round(name, what) for name in sides},
            device=device,
            warmup=0,
            inner=1,
            min_reps=args.rounds,
            max_reps=args.rounds,
            budget_s=math.inf,
        )
        for name, t in times.items():
            totals[name][what][0] = t["total_s"]
        print(f"{what}: {args.rounds} round(s) done", file=sys.stderr)

    if args.crf_share:
        results_share = crf_share(tagger, sides["chaincrf"], totals["chaincrf"], args)

    # The full prediction API: labels, marginals and span confidences.
    dev_tokens = [e["tokens"] for e in dev_examples[: predict_steps * args.batch_size]]
    start = time.perf_counter()
    tagger.predict(dev_tokens, batch_size=args.batch_size)
    api_seconds = time.perf_counter() - start
    api_tps = sum(len(t) for t in dev_tokens) / api_seconds

    machine = benchtools.machine(__file__, argv)
    results = {
        "device": (
            f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
            if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), "
            f"torch {torch.__version__}"
        ),
        "machine": machine,
        "chaincrf_optimizer": "Adam (unfused)" if args.plain_adam else "Adam (fused)",
        "batch_size": args.batch_size,
        "train_batches_per_round": train_steps,
        "predict_batches_per_round": {"baseline": predict_steps, "chaincrf": tagger_predict_steps},
        "chaincrf_eval_batch_size": args.eval_batch_size,
        "rounds": args.rounds,
        "parameters": parameters,
    }
    for name, value in totals.items():
        for what in ("train", "predict"):
            seconds, tokens = value[what]
            results[f"{name}_{what}_tokens_per_s"] = tokens / seconds
    results["train_ratio"] = (
        results["chaincrf_train_tokens_per_s"] / results["baseline_train_tokens_per_s"]
    )
    results["predict_ratio"] = (
        results["chaincrf_predict_tokens_per_s"] / results["baseline_predict_tokens_per_s"]
    )
    results["chaincrf_predict_api_tokens_per_s"] = api_tps
    if device.type == "cuda":
        results["gpu_utilisation_percent"] = {
            key: sampler.mean(key) for key in sorted(sampler.samples)
        }
        results["peak_memory_bytes"] = peak_memory
    else:
        import resource

        results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(benchtools.machine_line(machine))
    print(f"device: {results['device']}")
    print(f"parameters: baseline {parameters['baseline']:,}, chaincrf {parameters['chaincrf']:,}")
    print(f"{'':10} {'train tok/s':>12} {'predict tok/s':>14}")
    for name in sides:
        print(
            f"{name:10} {results[f'{name}_train_tokens_per_s']:12,.0f} {results[f'{name}_predict_tokens_per_s']:14,.0f}"
        )
    print(f"{'ratio':10} {results['train_ratio']:11.2f}x {results['predict_ratio']:13.2f}x")
    print(
        f"chaincrf SequenceTagger.predict (with marginals + span confidences): {api_tps:,.0f} tok/s"
    )
    if device.type == "cuda":
        for key in sorted(peak_memory):
            utilisation = results["gpu_utilisation_percent"].get(key)
            shown = "n/a" if utilisation is None else f"{utilisation:.0f}%"
            print(f"{key}: GPU busy {shown}, peak memory {peak_memory[key] / 2**20:,.0f} MiB")
    else:
        print(f"peak resident memory: {results['peak_rss_bytes'] / 2**20:,.0f} MiB")
    if args.crf_share:
        results["crf_share"] = results_share
        print("the CRF alone on chaincrf's batches (ms per batch; share of chaincrf's step):")
        for kernel, row in results_share.items():
            print(
                f"  {kernel:6} NLL + backward {row['train_ms']:.2f} ms ({row['train_share']:.1%}), "
                f"Viterbi {row['predict_ms']:.2f} ms ({row['predict_share']:.1%})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


def crf_share(tagger, side: dict, total: dict, args: argparse.Namespace) -> dict:
    """The CRF's own time per batch (NLL + backward on the training batches, Viterbi on the
    prediction batches; the encoder's emissions computed beforehand, not timed), with each kernel
    forced in turn, interleaved over the same batches; and its share of a chaincrf step (the
    step times measured above)."""
    crf = tagger.model.crf
    train_batches = [next(side["train"][0]) for _ in range(args.batches or 20)]
    predict_batches = [next(side["predict"][0]) for _ in range(max(1, (args.batches or 20) // 4))]
    with torch.no_grad():
        tagger.eval()
        train = [(tagger.model.emissions(b), b["tags"], b["mask"]) for b in train_batches]
        predict = [(tagger.model.emissions(b), b["mask"]) for b in predict_batches]
    step_train = (
        total["train"][0] / max(1, total["train"][1]) * sum(int(m.sum()) for _, _, m in train)
    )
    step_predict = (
        total["predict"][0] / max(1, total["predict"][1]) * sum(int(m.sum()) for _, m in predict)
    )
    kernels = ("eager", "auto")

    def nll_with(kernel: str):
        def run() -> None:
            crf.kernel = kernel
            for em, tags, mask in train:
                leaf = em.detach().requires_grad_(True)
                crf.nll(leaf, tags, mask, reduction="token_mean").backward()

        return run

    def viterbi_with(kernel: str):
        def run() -> None:
            crf.kernel = kernel
            with torch.inference_mode():
                for em, mask in predict:
                    crf.viterbi(em, mask)

        return run

    spent = {k: [0.0, 0.0] for k in kernels}
    before = crf.kernel
    reps = {"min_reps": max(1, args.rounds), "max_reps": max(1, args.rounds)}
    try:
        for i, make in enumerate((nll_with, viterbi_with)):
            fns = {k: make(k) for k in kernels}
            times = benchtools.time_entries(fns, warmup=0, inner=1, budget_s=math.inf, **reps)
            for kernel, t in times.items():
                spent[kernel][i] = t["total_s"]
    finally:
        crf.kernel = before
    rounds = max(1, args.rounds)
    out = {}
    for kernel, (train_s, predict_s) in spent.items():
        out[kernel] = {
            "train_ms": train_s / rounds / len(train) * 1e3,
            "predict_ms": predict_s / rounds / len(predict) * 1e3,
            "train_share": train_s / rounds / step_train,
            "predict_share": predict_s / rounds / step_predict,
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
