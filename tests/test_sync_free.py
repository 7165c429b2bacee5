"""Host synchronisations in the network's training step (issue 30, part 1), caught on the CPU.

The meta device holds shapes without values, so any read of a tensor's value on the host
(``.item()``, ``int()``, ``bool()``, ``.cpu()``, ``.tolist()``, boolean-mask indexing, packing
with host lengths) raises there, exactly where it would stall a GPU. The network computes its
emissions and their gradients on an accelerator without one; the CRF's own kernels are checked
on a GPU (``scripts/gpu_check.sh``: launches and synchronisations per call, a CUDA graph).
"""

from __future__ import annotations

import pytest
import torch

from chaincrf.network.config import TaggerConfig

B, T, C = 3, 7, 5
CHARS = {
    "cnn": {"char_encoder": "cnn"},
    "lstm": {"char_encoder": "lstm"},
    "none": {"char_encoder": "none"},
}
ENCODERS = {
    "bilstm": {"_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder", "hidden_size": 8,
               "num_layers": 2, "_partial_": True},
    "cnn": {"_target_": "chaincrf.network.encoders.cnn.CNNEncoder", "hidden_size": 8,
            "_partial_": True},
    "identity": {"_target_": "chaincrf.network.encoders.identity.IdentityEncoder",
                 "_partial_": True},
}  # fmt: skip


def network(chars: dict, encoder: dict) -> torch.nn.Module:
    embeddings = {"_target_": "chaincrf.network.embeddings.TokenEmbedder", "word_dim": 6,
                  "num_casing": 8, "word_dropout": 0.1, **chars}  # fmt: skip
    config = TaggerConfig(labels=["O", "B-X", "I-X"], num_words=20, num_chars=12,
                          embeddings=embeddings, encoder=encoder, scheme="BIO")  # fmt: skip
    return config.build_model().to("meta").train()


def meta_batch() -> dict:
    return {
        "words": torch.empty(B, T, dtype=torch.long, device="meta"),
        "chars": torch.empty(B, T, C, dtype=torch.long, device="meta"),
        "casing": torch.empty(B, T, dtype=torch.long, device="meta"),
        "mask": torch.empty(B, T, dtype=torch.bool, device="meta"),
    }


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("chars", sorted(CHARS))
def test_the_emissions_and_their_gradients_read_no_value_on_the_host(chars, encoder):
    model = network(CHARS[chars], ENCODERS[encoder])
    emissions = model.emissions(meta_batch())
    assert emissions.shape == (B, T, 3) and emissions.device.type == "meta"
    emissions.sum().backward()  # the backward pass too
    parts = (model.embedder, model.encoder, model.projection)  # the CRF's scores come later
    assert all(p.grad is not None for part in parts for p in part.parameters() if p.requires_grad)


@pytest.mark.parametrize("chars", ["cnn", "lstm"])
@pytest.mark.parametrize("shape", [(0, 4), (2, 0)])
def test_an_empty_batch_on_an_accelerator_embeds_to_an_empty_tensor(shape, chars):
    model = network(CHARS[chars], ENCODERS["identity"])
    batch = {k: v.new_empty(*shape, *v.shape[2:]) for k, v in meta_batch().items()}
    assert model.embedder(batch).shape == (*shape, model.embedder.output_dim)


HOST_READS = {
    "item": lambda x, mask: x.sum().item(),
    "int": lambda x, mask: int(mask.sum()),
    "bool": lambda x, mask: bool(mask.any()),
    "tolist": lambda x, mask: mask.sum(1).tolist(),
    "mask indexing": lambda x, mask: x[mask],
    "packing": lambda x, mask: torch.nn.utils.rnn.pack_padded_sequence(
        x, mask.sum(1), batch_first=True, enforce_sorted=False
    ),
}


@pytest.mark.parametrize("read", sorted(HOST_READS))
def test_the_detector_catches_a_host_read(read):
    """Each kind of host read raises on the meta device, where it would stall a GPU (the
    character BiLSTM packed its tokens with host lengths so, until it gained a padded path)."""
    x = torch.empty(B, T, 4, device="meta")
    mask = torch.empty(B, T, dtype=torch.bool, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        HOST_READS[read](x, mask)
