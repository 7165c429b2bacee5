"""Mixed precision: what autocast may run in bfloat16 or float16 on the CPU, and the autocast a
model's training precision means when it predicts.

Lightning's ``bf16-mixed`` turns on CPU autocast, which sends LSTMs to oneDNN in bfloat16; CPUs
without native bf16/fp16 support (AVX-512 BF16, AMX) have no such oneDNN primitive and fail
("could not create a primitive descriptor for the LSTM"). :func:`rnn_precision` runs an RNN in
float32 on those CPUs (autocast off for that call: the rest of the network keeps it) and as autocast says
everywhere else (GPUs, CPUs with the instructions).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from chaincrf.crf.autocast import autocast_enabled


@functools.cache
def cpu_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes ``dtype`` (bfloat16, float16) natively on this CPU."""
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN or without the query
        return False
    return dtype == torch.float32


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of CPU autocast when it is on, else None."""
    if not autocast_enabled("cpu"):
        return None
    try:
        return torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype()


def rnn_precision(data: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """A context for an RNN over ``data``: autocast off when CPU autocast is on but this CPU cannot
    run the RNN in autocast's dtype (see the module's note), else nothing. Inputs stay float32
    (embeddings are), so the RNN computes in float32."""
    if data.device.type == "cpu":
        dtype = _cpu_autocast_dtype()
        if dtype is not None and not cpu_supports(dtype):
            return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


_AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16,
             "16-mixed": torch.float16, "16": torch.float16}  # fmt: skip
"""Lightning's mixed precisions (and their short names) and the dtype they autocast to."""


def autocast_for(
    precision: str | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """The autocast a model trained in ``precision`` (Lightning's name, as stored in its
    checkpoint) runs its network in on ``device``, so that predictions are computed as the
    run's evaluation computed them (``chaincrf-eval`` uses the same precision): bfloat16
    autocast for ``bf16-mixed``, float16 for ``16-mixed`` on a GPU. Nothing (float32) for
    ``32-true``, for a model file that does not say (None), for other precisions, and for
    ``16-mixed`` on the CPU, which has no float16 autocast (``chaincrf-eval`` computes in float32
    there too)."""
    dtype = _AUTOCAST.get(str(precision))
    if dtype is None or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype == torch.float16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
