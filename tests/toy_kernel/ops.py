"""The toy kernel's operations (the signature every kernel shares): the sums over paths in
float64, Viterbi as eager's in the caller's dtype (the kernel suite asks every kernel for the
reference's Viterbi scores bit for bit)."""

from __future__ import annotations

from torch import Tensor

from chaincrf.crf.kernels.eager import ops as eager


def _wide(*tensors: Tensor) -> list[Tensor]:
    return [t.double() for t in tensors]


def log_likelihood(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True):
    out = eager.log_likelihood(
        *_wide(em), mask, *_wide(start, trans, end), tags, k, constrained, validate
    )
    return out.to(em.dtype)


def log_partition(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True):
    out = eager.log_partition(*_wide(em), mask, *_wide(start, trans, end), validate=validate)
    return out.to(em.dtype)


def viterbi(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True):
    return eager.viterbi(em, mask, start, trans, end, k=k, validate=validate)


def decode(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True):
    return eager.decode(em, mask, start, trans, end, validate=validate)


def marginals(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True):
    out = eager.marginals(*_wide(em), mask, *_wide(start, trans, end), validate=validate)
    return out.to(em.dtype)
