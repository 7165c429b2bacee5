"""One run directory for all the processes of a multi-process launch.

torchrun and SLURM's ``srun`` start every rank as its own ``chaincrf-train``; each would let
Hydra name a run directory from the clock (two ranks, two timestamps). :func:`shared_run_dir`
(an argument hook of ``chaincrf-train``, run before Hydra) gives all ranks the directory rank 0
names:

- **torchrun**: rank 0 writes its timestamp into the launcher's own key-value store (the
  ``TCPStore`` at ``MASTER_ADDR:MASTER_PORT`` that torchrun's agent serves to its workers) and
  the other ranks read it there, on every node;
- **SLURM** (``srun``, Lightning's SLURM environment): the job's id names the directory
  (``slurm-<job>[_<array task>].<step>``), the one name every task of the step knows (and a
  torchrun whose workers have no agent store, older torch, is named after its run id);
- **Lightning's own launcher** (``strategy=ddp`` without torchrun) already passes rank 0's
  ``hydra.run.dir`` to the processes it starts, and ``ddp_spawn`` has one Hydra process: both are
  left as they are, as is a command line that sets ``hydra.run.dir`` itself or is a multirun.

Ranks other than 0 also get ``hydra.output_subdir=null`` and a console-only log, so that the
directory holds one ``.hydra/``, one ``train.log`` and (see ``chaincrf.cli.train``) one
``config.yaml``, one checkpoint folder and one report, all written by rank 0.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("chaincrf.launch")

STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S.%f"
"""The run directory's name: conf/train.yaml's ``${now:...}`` pattern."""

RUN_DIR_PATTERN = "${oc.env:CHAINCRF_OUTPUT,outputs}/${task_name}/"
"""conf/train.yaml's ``hydra.run.dir`` before its timestamp."""

_STORE_TIMEOUT_S = 300


def launch_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(this process's global rank, number of processes) as the launcher says in the
    environment: torchrun's (and Lightning's launcher's) ``WORLD_SIZE``, else SLURM's
    ``SLURM_NTASKS``; the rank from ``RANK``, else ``SLURM_PROCID``, else ``LOCAL_RANK``
    (what Lightning's launcher sets in the processes it starts); ``(0, 1)`` for a plain run."""
    env = os.environ if env is None else env
    values = []
    for keys in (("WORLD_SIZE", "SLURM_NTASKS"), ("RANK", "SLURM_PROCID", "LOCAL_RANK")):
        key = next((k for k in keys if env.get(k)), None)
        try:
            values.append(int(env[key]) if key else None)
        except ValueError:
            raise ValueError(f"{key}={env[key]!r}: not an integer (set by the launcher)") from None
    world, rank = values
    return (rank or 0, world) if world else (0, 1)


def shared_run_dir(argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` with ``hydra.run.dir`` set to rank 0's choice when this process is one of several
    started by torchrun or SLURM, and on ranks other than 0 without a ``.hydra/`` folder or log
    file of their own. Unchanged for one process or a multirun; a command line that names the
    directory (Lightning's launcher does, for the processes it starts) keeps it.

    Raises:
        ValueError: when the ranks cannot agree on a directory (a multi-process launch with
            neither torchrun's store nor a SLURM job id, and no ``hydra.run.dir``).
    """
    env = os.environ if env is None else env
    rank, world = launch_rank(env)
    if world <= 1 or any(a.startswith(("-m", "--multirun")) for a in argv):
        return argv
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        if env.get("RANK") and env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            stamp = _agree_through_store(rank, env)
        elif env.get("SLURM_JOB_ID"):
            stamp = _slurm_name(env)
        elif env.get("TORCHELASTIC_RUN_ID", "none") != "none":  # torchrun without an agent store
            stamp = f"torchrun-{env['TORCHELASTIC_RUN_ID']}-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        else:
            raise ValueError(
                f"rank {rank} of {world}: cannot agree on one run directory (no torchrun store, "
                "no SLURM job id): name it, e.g. hydra.run.dir=outputs/train/<name>"
            )
        extra.append(f"hydra.run.dir={RUN_DIR_PATTERN}{stamp}")
    if rank > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return [*argv, *(e for e in extra if e not in argv)]


def _agree_through_store(rank: int, env: Mapping[str, str]) -> str:
    """Rank 0's timestamp, shared through torchrun's store (one key per launch and restart)."""
    from torch.distributed import TCPStore

    store = TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=_STORE_TIMEOUT_S),
    )
    key = (
        f"chaincrf/run_dir/{env.get('TORCHELASTIC_RUN_ID', '')}/"
        f"{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    )
    if rank == 0:
        stamp = datetime.datetime.now().strftime(STAMP_FORMAT)
        store.set(key, stamp)
        return stamp
    return store.get(key).decode()


def _slurm_name(env: Mapping[str, str]) -> str:
    """``slurm-<job>[_<array task>].<step>``: the same in every task of a job step."""
    job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
    task = env.get("SLURM_ARRAY_TASK_ID")
    step = env.get("SLURM_STEP_ID", "0")
    return f"slurm-{job}{f'_{task}' if task else ''}.{step}"
