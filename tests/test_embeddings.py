"""TokenEmbedder: shapes, padding, pretrained vectors, word dropout, casing, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from chaincrf.data.casing import CASING_CLASSES, casing_id, casing_ids
from chaincrf.network.embeddings import NUM_CASING, UNK_ID, LockedDropout, TokenEmbedder

NUM_WORDS, NUM_CHARS = 50, 20
CONF = Path(__file__).resolve().parents[1] / "conf" / "embeddings"


def make_batch(lengths=(5, 3, 1), max_chars=6, seed=0, garbage=False):
    """A batch in the data layer's format; with ``garbage``, padded slots hold random ids."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, T)
    words = torch.randint(2, NUM_WORDS, (B, T), generator=g)
    word_lengths = torch.randint(1, max_chars + 1, (B, T), generator=g)
    chars = torch.randint(1, NUM_CHARS, (B, T, max_chars), generator=g)
    chars = chars * (torch.arange(max_chars) < word_lengths.unsqueeze(-1))
    casing = torch.randint(1, NUM_CASING, (B, T), generator=g)
    if garbage:
        noise = torch.Generator().manual_seed(seed + 1)
        words = torch.where(mask, words, torch.randint(0, NUM_WORDS, (B, T), generator=noise))
        chars = torch.where(
            mask.unsqueeze(-1),
            chars,
            torch.randint(0, NUM_CHARS, (B, T, max_chars), generator=noise),
        )
        casing = torch.where(mask, casing, torch.randint(0, NUM_CASING, (B, T), generator=noise))
    else:
        words, casing = words * mask, casing * mask
        chars = chars * mask.unsqueeze(-1)
    return {"words": words, "chars": chars, "casing": casing, "mask": mask}


@pytest.mark.parametrize(("char_encoder", "char_size"), [("cnn", 30), ("lstm", 50), ("none", 0)])
@pytest.mark.parametrize("num_casing", [0, NUM_CASING])
def test_output_shape_and_dim(char_encoder, char_size, num_casing):
    embedder = TokenEmbedder(
        NUM_WORDS,
        word_dim=16,
        num_chars=NUM_CHARS,
        char_encoder=char_encoder,
        num_casing=num_casing,
        casing_dim=4,
    )
    expected_dim = 16 + char_size + (4 if num_casing else 0)
    assert embedder.output_dim == expected_dim
    batch = make_batch()
    out = embedder(batch)
    assert out.shape == (3, 5, expected_dim)
    assert out.dtype == torch.float32
    assert torch.all(out[~batch["mask"]] == 0)


@pytest.mark.parametrize("char_encoder", ["cnn", "lstm"])
def test_padding_is_ignored(char_encoder):
    """Garbage ids at padded positions, and extra padding, change nothing at real positions."""
    torch.manual_seed(0)
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder=char_encoder, num_casing=NUM_CASING
    ).eval()
    clean, dirty = make_batch(), make_batch(garbage=True)
    mask = clean["mask"]
    expected = embedder(clean)[mask]
    torch.testing.assert_close(embedder(dirty)[mask], expected)
    # Wider character padding and a longer time axis.
    wide = {k: v for k, v in clean.items()}
    wide["chars"] = torch.nn.functional.pad(clean["chars"], (0, 4))
    wide = {
        "words": torch.nn.functional.pad(wide["words"], (0, 2)),
        "chars": torch.nn.functional.pad(wide["chars"], (0, 0, 0, 2)),
        "casing": torch.nn.functional.pad(wide["casing"], (0, 2)),
        "mask": torch.nn.functional.pad(mask, (0, 2)),
    }
    torch.testing.assert_close(embedder(wide)[wide["mask"]], expected)


@pytest.mark.parametrize("char_encoder", ["cnn", "lstm"])
def test_each_token_encoded_alone_equals_batched(char_encoder):
    """The char encoder packs real tokens; a token's vector does not depend on its neighbours."""
    torch.manual_seed(0)
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder=char_encoder
    ).eval()
    batch = make_batch()
    out = embedder(batch)  # (B, T, D)
    b, t = 0, 3
    single = {
        "words": batch["words"][b : b + 1, t : t + 1],
        "chars": batch["chars"][b : b + 1, t : t + 1],
        "mask": batch["mask"][b : b + 1, t : t + 1],
    }
    torch.testing.assert_close(embedder(single)[0, 0], out[b, t])


@pytest.mark.parametrize("char_encoder", ["cnn", "lstm"])
def test_the_compiled_embedder_equals_eager_and_breaks_only_where_planned(char_encoder):
    """Compiled, the embedder equals eager (features and gradients); its graphs break only
    around the CPU's real-token character path, which runs eagerly."""
    from test_encoders import planned_breaks_only

    torch.manual_seed(0)
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder=char_encoder, dropout=0.0
    )
    batch = make_batch(lengths=(5, 3, 1, 4), garbage=True)
    compiled = torch.compile(embedder, backend="aot_eager")
    results = []
    for run in (embedder, compiled):
        embedder.zero_grad()
        out = run(batch)
        (out * torch.linspace(0.5, 2.0, out.shape[-1])).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in embedder.named_parameters()}))
    (eager, eager_grads), (graph, graph_grads) = results
    torch.testing.assert_close(graph, eager)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(graph_grads[name], grad, msg=name)
    assert planned_breaks_only(embedder, batch) > 0


def test_the_char_lstm_padded_path_equals_packed():
    """The character BiLSTM's accelerator path (``padded``: every token padded to the longest,
    the backward direction over each token reversed within its length, no host read) gives
    the packed path's final states and gradients, whatever the padding holds."""
    torch.manual_seed(0)
    embedder = TokenEmbedder(NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder="lstm")
    encoder = embedder.char_encoder
    chars = make_batch(lengths=(5, 3, 1), garbage=True)["chars"].reshape(15, -1)
    lengths = (chars != 0).sum(dim=1).clamp(min=1)
    real = torch.arange(chars.shape[1]) < lengths.unsqueeze(1)
    noisy = torch.where(real, chars, torch.randint(1, NUM_CHARS, chars.shape))  # past the end
    results = []
    for run, ids in ((encoder, chars), (encoder.padded, noisy)):
        encoder.zero_grad()
        out = run(ids, lengths)
        (out * torch.linspace(0.5, 2.0, out.shape[-1])).sum().backward()
        results.append((out, [p.grad.clone() for p in encoder.parameters()]))
    (packed, packed_grads), (padded, padded_grads) = results
    torch.testing.assert_close(padded, packed)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(b, a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("char_encoder", ["cnn", "lstm"])
def test_on_the_gpu_the_embedder_equals_the_cpus_also_compiled(char_encoder):
    """On CUDA the character encoders encode every padded position with no host read (the
    character BiLSTM's directions padded, in cuDNN): features and gradients equal the CPU's
    (real tokens only, packed), eagerly and compiled (its planned graph breaks only), and the
    padded path runs under bf16 autocast and on an empty batch."""
    from test_encoders import planned_breaks_only

    torch.manual_seed(0)
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder=char_encoder, dropout=0.0
    )
    batch = make_batch(lengths=(5, 3, 1, 4), garbage=True)
    on_gpu = {k: v.cuda() for k, v in batch.items()}
    results = []
    for device, run, inputs in (
        ("cpu", embedder, batch),
        ("cuda", embedder, on_gpu),
        ("cuda", torch.compile(embedder, backend="aot_eager"), on_gpu),
    ):
        embedder.to(device).zero_grad()
        out = run(inputs)
        (out * torch.linspace(0.5, 2.0, out.shape[-1], device=device)).sum().backward()
        grads = {n: p.grad.cpu() for n, p in embedder.named_parameters() if p.grad is not None}
        results.append((out.detach().cpu(), grads))
    (expected, expected_grads), *on_cuda = results
    for out, grads in on_cuda:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    planned_breaks_only(embedder, on_gpu)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(embedder(on_gpu).float()).all()
    empty = {k: v[:0] for k, v in on_gpu.items()}
    assert embedder(empty).shape == (0, *expected.shape[1:])


def test_char_cnn_length_groups_equal_one_convolution(monkeypatch):
    """Without autograd the char CNN encodes tokens in length groups: same vectors as one
    convolution over all tokens padded to the longest (and as the training-mode path)."""
    from chaincrf.network import chars

    torch.manual_seed(0)
    embedder = TokenEmbedder(NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder="cnn").eval()
    batch = make_batch(lengths=(40, 37, 30, 22, 9), max_chars=17, garbage=True)  # 138 tokens
    monkeypatch.setattr(chars, "CHAR_GROUP_MIN_TOKENS", 16)
    calls = []
    original = chars.CharCNN._encode
    monkeypatch.setattr(
        chars.CharCNN,
        "_encode",
        lambda self, c, n: calls.append(c.shape) or original(self, c, n),
    )
    with torch.no_grad():
        grouped = embedder(batch)
    assert len(calls) == chars.CHAR_GROUPS and len({shape[1] for shape in calls}) > 1
    monkeypatch.setattr(chars, "CHAR_GROUPS", 1)
    with torch.no_grad():
        single = embedder(batch)
    torch.testing.assert_close(grouped, single)
    torch.testing.assert_close(embedder(batch), single)  # grad enabled: one convolution


@pytest.mark.parametrize("char_encoder", ["cnn", "lstm"])
def test_char_encoder_sees_only_real_tokens_and_characters(char_encoder):
    embedder = TokenEmbedder(NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder=char_encoder)
    seen = []
    embedder.char_encoder.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape)
    )
    batch = make_batch(lengths=(5, 3, 1), max_chars=6)
    batch["chars"] = torch.nn.functional.pad(batch["chars"], (0, 10))  # 16 slots, at most 6 used
    embedder(batch)
    longest = int((batch["chars"] != 0).sum(-1).max())
    assert seen == [torch.Size([9, longest])]  # 5 + 3 + 1 real tokens, not 3 * 5 slots


def test_gradients_reach_every_parameter():
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder="lstm", num_casing=NUM_CASING
    )
    embedder(make_batch()).sum().backward()
    for name, parameter in embedder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_pretrained_vectors_and_freeze():
    vectors = torch.randn(NUM_WORDS, 8)
    frozen = TokenEmbedder(NUM_WORDS, word_dim=8, pretrained=vectors, freeze=True).eval()
    batch = make_batch()
    out = frozen(batch)
    mask = batch["mask"]
    torch.testing.assert_close(out[mask], vectors[batch["words"][mask]])
    assert not frozen.word_embedding.weight.requires_grad
    tuned = TokenEmbedder(NUM_WORDS, word_dim=8, pretrained=vectors, freeze=False)
    assert tuned.word_embedding.weight.requires_grad
    original = vectors.clone()
    with torch.no_grad():
        tuned.word_embedding.weight.add_(1.0)
    torch.testing.assert_close(vectors, original)  # the embedder owns a copy


def test_word_adapter_starts_as_the_pretrained_vectors_and_moves_unseen_words_through_the_map():
    vectors = torch.randn(NUM_WORDS, 8)
    embedder = TokenEmbedder(NUM_WORDS, word_dim=8, pretrained=vectors, word_adapter=True)
    embedder.eval()
    batch = make_batch()
    mask = batch["mask"]
    torch.testing.assert_close(embedder(batch)[mask], vectors[batch["words"][mask]])
    trainable = {n for n, p in embedder.named_parameters() if p.requires_grad}
    assert trainable == {"word_map.weight", "word_map.bias", "word_residual.weight"}

    # one step on a loss that sees word 2 only: word 2 gets a correction of its own, word 3
    # (never seen, e.g. a test word with a pretrained vector) moves through the shared map only
    optimizer = torch.optim.SGD([p for p in embedder.parameters() if p.requires_grad], lr=0.5)
    seen = {"words": torch.tensor([[2]]), "mask": torch.tensor([[True]])}
    unseen = {"words": torch.tensor([[3]]), "mask": torch.tensor([[True]])}
    before = embedder(unseen).detach().clone()
    embedder(seen).pow(2).sum().backward()
    optimizer.step()
    residual = embedder.word_residual.weight.detach()
    assert residual[2].abs().sum() > 0 and residual[3].abs().sum() == 0
    assert not torch.allclose(embedder(unseen), before)
    torch.testing.assert_close(embedder.word_embedding.weight, vectors)  # the table stays fixed


def test_word_dropout_replaces_real_ids_by_unk_only_in_training():
    vectors = torch.arange(NUM_WORDS, dtype=torch.float32).unsqueeze(1)  # vector i = [i]
    embedder = TokenEmbedder(
        NUM_WORDS, word_dim=1, pretrained=vectors, word_dropout=0.5, dropout=0.0
    )
    batch = make_batch(lengths=(40, 40, 40), seed=3)
    mask = batch["mask"]
    torch.manual_seed(0)
    seen = embedder(batch)[..., 0]  # word ids as seen after word dropout, (B, T)
    replaced = seen != batch["words"]
    assert torch.all(seen[replaced] == UNK_ID)
    assert 0.35 < replaced[mask].float().mean() < 0.65
    assert embedder.eval()(batch)[..., 0].eq(batch["words"].float()).all()


def test_locked_dropout_shares_one_mask_per_sentence():
    x = torch.rand(4, 30, 64) + 1.0  # no zeros of its own
    locked = LockedDropout(0.5)
    torch.manual_seed(0)
    out = locked(x)
    dropped = out == 0  # (B, T, D)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # same features at every token
    assert 0.35 < dropped[:, 0].float().mean() < 0.65
    assert not torch.equal(dropped[0, 0], dropped[1, 0])  # a new mask per sentence
    torch.testing.assert_close(out[~dropped], 2 * x[~dropped])  # kept features scaled by 1/(1-p)
    assert torch.equal(locked.eval()(x), x)
    with pytest.raises(ValueError, match="p must be in"):
        LockedDropout(1.0)
    # In the embedder: the concatenated features share the sentence's mask.
    embedder = TokenEmbedder(NUM_WORDS, word_dim=16, num_chars=NUM_CHARS, locked_dropout=True)
    assert isinstance(embedder.dropout, LockedDropout)
    batch = make_batch(lengths=(5, 5, 5))
    torch.manual_seed(1)
    zero = embedder(batch) == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)) and zero.any()
    assert type(TokenEmbedder(NUM_WORDS).dropout) is torch.nn.Dropout


def test_casing_ids():
    names = dict(enumerate(CASING_CLASSES))
    assert names[0] == "<pad>"
    assert [
        names[i] for i in casing_ids(["1984", "12.5%", "word", "EU", "Peter", "-2.", "-", ""])
    ] == [
        "numeric",
        "mainly_numeric",
        "all_lower",
        "all_upper",
        "initial_upper",
        "contains_digit",
        "other",
        "other",
    ]
    assert all(casing_id(t) != 0 for t in ["x", "X", "1", "?"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_words": 0}, ValueError, "num_words must be a positive int; got 0"),
        ({"word_dim": -1}, ValueError, "word_dim must be a positive int; got -1"),
        ({"char_encoder": "gru"}, ValueError, r"char_encoder must be one of .*got 'gru'"),
        ({"num_chars": 5, "char_dim": 0}, ValueError, "char_dim must be a positive int; got 0"),
        (
            {"num_chars": 5, "char_kernel_size": 2},
            ValueError,
            "char_kernel_size must be odd; got 2",
        ),
        ({"word_dropout": 1.0}, ValueError, r"word_dropout must be in \[0, 1\); got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"num_casing": -1}, ValueError, "num_casing must be >= 0"),
        (
            {"pretrained": torch.zeros(NUM_WORDS, 7)},
            ValueError,
            r"pretrained must have shape \(num_words, word_dim\) = \(50, 8\); got \(50, 7\)",
        ),
        (
            {"pretrained": torch.zeros(NUM_WORDS + 1, 8)},
            ValueError,
            r"got \(51, 8\)",
        ),
        ({"pretrained": [[0.0] * 8] * NUM_WORDS}, TypeError, "pretrained must be a floating-point"),
        (
            {"pretrained": torch.zeros(NUM_WORDS, 8, dtype=torch.long)},
            TypeError,
            "dtype torch.int64",
        ),
    ],
)
def test_construction_errors(kwargs, error, message):
    arguments = {"num_words": NUM_WORDS, "word_dim": 8, **kwargs}
    with pytest.raises(error, match=message):
        TokenEmbedder(**arguments)


def test_missing_batch_fields_raise():
    batch = make_batch()
    with_chars = TokenEmbedder(NUM_WORDS, word_dim=8, num_chars=NUM_CHARS)
    with pytest.raises(
        ValueError,
        match=r"batch\['chars'\] must be a long tensor of shape \(3, 5, max_chars\); got None",
    ):
        with_chars({"words": batch["words"], "mask": batch["mask"]})
    with_casing = TokenEmbedder(NUM_WORDS, word_dim=8, num_casing=NUM_CASING)
    with pytest.raises(
        ValueError, match=r"batch\['casing'\] must be a long tensor of shape \(3, 5\)"
    ):
        with_casing({"words": batch["words"], "mask": batch["mask"]})
    with pytest.raises(ValueError, match="must have the same shape"):
        with_casing({"words": batch["words"], "mask": batch["mask"][:, :2]})


def test_empty_batch_of_tokens():
    embedder = TokenEmbedder(NUM_WORDS, word_dim=8, num_chars=NUM_CHARS, char_encoder="lstm")
    batch = make_batch()
    batch["mask"] = torch.zeros_like(batch["mask"])
    out = embedder(batch)
    assert out.shape == (3, 5, embedder.output_dim) and torch.all(out == 0)


@pytest.mark.parametrize("name", sorted(path.stem for path in CONF.glob("*.yaml")))
def test_every_embeddings_config_instantiates(name):
    """Each conf/embeddings/*.yaml (composed, as the CLIs do) is a Hydra partial completed with
    the vocabulary sizes."""
    from test_cli import NER_DATA, compose_config

    config = compose_config([*NER_DATA, "run_dir=.", f"embeddings={name}"]).embeddings
    assert config._partial_ is True
    pretrained = torch.randn(NUM_WORDS, config.word_dim)
    embedder = instantiate(config)(num_words=NUM_WORDS, num_chars=NUM_CHARS, pretrained=pretrained)
    assert isinstance(embedder, TokenEmbedder)
    assert embedder(make_batch()).shape == (3, 5, embedder.output_dim)
