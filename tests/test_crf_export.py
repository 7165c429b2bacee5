"""The export kernel and the layer outside Python: ``kernel="export"`` against eager,
``torch.jit.script``, ``torch.export`` with dynamic batch and length, and the ONNX exporter
with onnxruntime — paths and scores identical to eager on ragged batches, with and without
constraints, at shapes never seen at export."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from chaincrf import CRF
from chaincrf.crf import plan
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import ragged_batch

LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
K = len(LABELS)
# (batch, length) never used at export or scripting time; includes T = 0, T = 1, B = 1
UNSEEN = [(4, 11), (1, 1), (2, 23), (5, 0), (6, 3)]


def _layer(constrained: bool, batch_first: bool = True, kernel: str = "auto", seed: int = 0):
    torch.manual_seed(seed)
    constraints = allowed_transitions("BIOES", LABELS) if constrained else None
    crf = CRF(K, batch_first=batch_first, constraints=constraints, kernel=kernel)
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start_transitions.normal_()
        crf.end_transitions.normal_()
    return crf


def _inputs(B: int, T: int, seed: int, dtype=torch.float32):
    emissions, tags, mask, _ = ragged_batch(B, T, K, seed=seed, dtype=dtype)
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 0.0)  # finite for onnxruntime
    if B > 2 and T > 0:
        mask[2] = False  # an empty row
    return emissions, tags, mask


class Decoder(torch.nn.Module):
    """A module using the CRF as users do: emissions in, best paths and scores out."""

    def __init__(self, crf: CRF) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, emissions: torch.Tensor, mask: torch.Tensor):
        return self.crf.viterbi(emissions, mask)


class Partition(torch.nn.Module):
    def __init__(self, crf: CRF) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, emissions: torch.Tensor, mask: torch.Tensor):
        return self.crf.log_partition(emissions, mask)


# ---------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_kernel_equals_eager(constrained, dtype):
    crf = _layer(constrained, kernel="export").to(dtype)
    reference = _layer(constrained, kernel="eager").to(dtype)
    reference.load_state_dict(crf.state_dict())
    emissions, tags, mask = _inputs(6, 9, seed=1, dtype=dtype)
    emissions[4, 1] = float("-inf")  # row 4: no allowed path
    mask[4] = True
    tags = torch.where(mask, tags, 0)
    with plan.record() as ran:
        paths, scores = crf.viterbi(emissions, mask)
        log_z = crf.log_partition(emissions, mask)
        decoded = crf.decode(emissions, mask)
    assert ran == [("viterbi", "export"), ("log_partition", "export"), ("viterbi", "export")]
    want_paths, want_scores = reference.viterbi(emissions, mask)
    assert torch.equal(paths, want_paths) and torch.equal(scores, want_scores)
    assert decoded == reference.decode(emissions, mask)
    assert torch.isneginf(scores[4]) and (paths[4] == -1).all() and scores[2] == 0
    torch.testing.assert_close(log_z, reference.log_partition(emissions, mask))
    # the log-likelihood and its gradients (rows with an allowed gold path)
    rows = [0, 1, 2, 3, 5]
    leaf = emissions[rows].clone().requires_grad_(True)
    if constrained:  # a gold path the constraints allow: the reference's best path
        tags = torch.where(mask, want_paths, 0)
    llh = crf(leaf, tags[rows], mask[rows], reduction="sum")
    llh.backward()
    want_leaf = emissions[rows].clone().requires_grad_(True)
    reference(want_leaf, tags[rows], mask[rows], reduction="sum").backward()
    torch.testing.assert_close(leaf.grad, want_leaf.grad)
    torch.testing.assert_close(crf.transitions.grad, reference.transitions.grad)
    torch.testing.assert_close(crf.start_transitions.grad, reference.start_transitions.grad)


def test_export_kernel_checks_values_like_eager():
    crf = _layer(False, kernel="export")
    emissions, _, mask = _inputs(3, 4, seed=2)
    emissions[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="batch row 1, position 0 holds NaN"):
        crf.viterbi(emissions, mask)
    tags = torch.zeros(3, 4, dtype=torch.long)
    tags[2, 1] = K
    with pytest.raises(ValueError, match=rf"got {K} at batch row 2, position 1"):
        crf(torch.zeros(3, 4, K), tags)


def test_what_the_export_kernel_cannot_run_goes_to_eager():
    crf = _layer(False, kernel="export")
    emissions, _, mask = _inputs(3, 5, seed=3)
    with plan.record() as ran, torch.no_grad():
        crf.viterbi(emissions, mask, k=2)
        crf.marginals(emissions, mask)
    assert ran == [("viterbi", "eager"), ("marginals", "export")]


def test_the_planner_picks_the_export_kernel_when_exporting_only():
    problem = plan.Problem("viterbi", 2, 5, 3, torch.float32, "cpu", compiling=True)
    assert plan.choose(problem) == "fused"  # torch.compile: the custom ops
    exporting = plan.Problem("viterbi", 2, 5, 3, torch.float32, "cpu", True, True, True, True)
    assert plan.choose(exporting) == "export"


# ---------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_jit_script_of_the_layer(constrained, batch_first):
    crf = _layer(constrained, batch_first=batch_first)
    scripted = torch.jit.script(crf)
    for seed, (B, T) in enumerate(UNSEEN):
        emissions, tags, mask = _inputs(B, T, seed=seed)
        if not batch_first:
            emissions, tags, mask = emissions.transpose(0, 1), tags.t(), mask.t()
        paths, scores = scripted.viterbi(emissions, mask)
        want_paths, want_scores = crf.viterbi(emissions, mask)
        assert torch.equal(paths, want_paths) and torch.equal(scores, want_scores)
        assert scripted.decode(emissions, mask) == crf.decode(emissions, mask)
        want = crf.log_partition(emissions, mask)
        torch.testing.assert_close(scripted.log_partition(emissions, mask), want)
        if not constrained:
            tags = torch.where(mask, tags, 0)
            llh = scripted(emissions, tags, mask, "none")
            torch.testing.assert_close(llh, crf(emissions, tags, mask, "none"))
    with pytest.raises(Exception, match="num_tags"):
        scripted.viterbi(torch.zeros(2, 3, K + 1))


def test_a_scripted_module_saves_loads_and_shares_the_parameters():
    crf = _layer(True)
    scripted = torch.jit.script(Decoder(crf))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    emissions, _, mask = _inputs(4, 13, seed=5)
    paths, scores = loaded(emissions, mask)
    want_paths, want_scores = crf.viterbi(emissions, mask)
    assert torch.equal(paths, want_paths) and torch.equal(scores, want_scores)
    with torch.no_grad():  # the scripted module holds the layer's tensors, not copies
        crf.transitions.add_(1.0)
    assert torch.equal(scripted.crf.transitions, crf.transitions)


# ---------------------------------------------------------------------------- torch.export


def _dynamic():
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    return ({0: batch, 1: length}, {0: batch, 1: length})


@pytest.mark.parametrize("constrained", [False, True])
def test_torch_export_with_dynamic_batch_and_length(constrained):
    crf = _layer(constrained)
    emissions, _, mask = _inputs(3, 7, seed=6)
    with plan.record() as ran:
        decoder = torch.export.export(Decoder(crf), (emissions, mask), dynamic_shapes=_dynamic())
        partition = torch.export.export(
            Partition(crf), (emissions, mask), dynamic_shapes=_dynamic()
        )
    assert {kernel for _, kernel in ran} == {"export"}
    assert not any("chaincrf" in str(node.target) for node in decoder.graph.nodes)
    for seed, (B, T) in enumerate(UNSEEN):
        emissions, _, mask = _inputs(B, T, seed=10 + seed)
        paths, scores = decoder.module()(emissions, mask)
        want_paths, want_scores = crf.viterbi(emissions, mask)
        assert torch.equal(paths, want_paths) and torch.equal(scores, want_scores)
        want = crf.log_partition(emissions, mask)
        torch.testing.assert_close(partition.module()(emissions, mask), want)


# ---------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_sessions(tmp_path_factory):
    """Both layers (with and without constraints) through torch.onnx.export(dynamo=True)
    (the torch.export-based exporter; the TorchScript-based one is deprecated) into
    onnxruntime sessions."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    sessions = {}
    emissions, _, mask = _inputs(3, 7, seed=7)
    for constrained in (False, True):
        crf = _layer(constrained, seed=1).eval()
        path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
        with warnings.catch_warnings(), plan.record() as ran:
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                Decoder(crf),
                (emissions, mask),
                dynamic_shapes=_dynamic(),
                input_names=["emissions", "mask"],
                output_names=["paths", "scores"],
                dynamo=True,
                verbose=False,
            )
        assert {kernel for _, kernel in ran} == {"export"}
        program.save(str(path))
        sessions[constrained] = (crf, ort.InferenceSession(str(path)))
    return sessions


@pytest.mark.parametrize("constrained", [False, True])
def test_onnx_runtime_gives_eagers_paths_and_scores(onnx_sessions, constrained):
    crf, session = onnx_sessions[constrained]
    eager = _layer(constrained, kernel="eager")
    eager.load_state_dict(crf.state_dict())
    for seed, (B, T) in enumerate(UNSEEN):
        emissions, _, mask = _inputs(B, T, seed=20 + seed)
        paths, scores = session.run(None, {"emissions": emissions.numpy(), "mask": mask.numpy()})
        want_paths, want_scores = eager.viterbi(emissions, mask)
        assert paths.tolist() == want_paths.tolist(), (B, T)
        assert scores.tolist() == want_scores.tolist(), (B, T)  # the same float32 bits
