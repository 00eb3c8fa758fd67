"""Data-parallel training under ``torchrun`` (``torch.distributed``): which process does what.

``torchrun --nproc-per-node N -m vptcli train ...`` (and multi-node with torchrun's ``--nnodes`` /
``--rdzv-*`` options) starts N copies of ``vpt train``; each reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment torchrun sets and joins one process group (:func:`init_from_env`):
NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on a CPU. Without those variables (or
with ``WORLD_SIZE=1``) nothing changes: one process, :data:`SINGLE`.

What each rank does (hooks in :mod:`vptcli.training`):

- **Order and sharding**: every rank draws the same epoch order from ``(seed, epoch)`` (as one process
  does), cuts it into the same global batches of ``--batch-size`` images, and takes its share of each
  (:meth:`DistContext.shard`: items ``rank, rank + N, ...``), in the manner of PyTorch's
  ``DistributedSampler`` but per global batch, so the global batch -- and with it the step, the schedule
  and the result -- is the one of a single process with the same ``--batch-size``.
- **Gradients**: each rank's loss is its share's summed loss divided by the *global* batch's
  denominator (image count, or the sum of class weights of a weighted loss), and the tuned parameters'
  gradients are summed over the ranks with one all-reduce per step (:func:`all_reduce_grads`, the
  frozen backbone has no gradient). The sum of the shares is then exactly the single-process gradient
  whatever the shares' sizes (a last batch smaller than N leaves some ranks empty), which averaging
  DDP's way would not give. The optimiser step then runs identically on every rank, so the tuned
  tensors stay equal without a broadcast. DA-VPT's batch metric loss is computed per share (weighted
  by its size): an approximation of the single-process loss, not an identity.
- **Feature cache**: each rank runs the frozen blocks on its contiguous share of the images
  (:meth:`DistContext.span`) and the shares are all-gathered (:func:`all_gather_rows`), so every rank
  holds the whole cache after ``1/N`` of the work; rank 0 alone writes the on-disk copy.
- **Validation**: each rank scores its share of the validation images; probabilities, labels and the
  loss sum are gathered, so every rank computes the same metrics (and takes the same early-stopping
  decision).
- **Files and terminal**: rank 0 alone writes the run folder and prints; the other ranks report to a
  silent reporter. A resume reads the run folder's checkpoint on every rank (a folder shared by the
  nodes, as ``--out``).
- The warm start of the head (the linear probe's L-BFGS fit) runs on every rank on the same features:
  deterministic and small next to the cache. ``--prompt-init patch-kmeans`` runs k-means on rank 0 only
  and broadcasts the prompts (:func:`broadcast_`).

Source: PyTorch distributed overview and ``torchrun`` documentation (environment variables,
``init_process_group(init_method="env://")``).
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch

from vptcli.errors import VptError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` in ``[0, world_size)``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def shard(self, items):
        """This rank's share of one global batch (a sequence or tensor): items ``rank::world_size``."""
        return items[self.rank :: self.world_size]

    def span(self, n: int) -> range:
        """This rank's contiguous share of ``range(n)`` (the first ``n % world_size`` ranks get one more):
        :func:`vptcli.shards.shard_block`, the split ``vpt predict --shard`` uses."""
        from vptcli.shards import shard_block

        return shard_block(n, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


SINGLE = DistContext()
"""One process (no process group)."""


def env_context(environ=None) -> DistContext:
    """The :class:`DistContext` torchrun's environment describes (``SINGLE`` when it is absent).

    Raises:
        VptError: the variables are set but not integers, or inconsistent.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        ctx = DistContext(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise VptError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None
    if not (ctx.world_size >= 1 and 0 <= ctx.rank < ctx.world_size):
        raise VptError(f"RANK {ctx.rank} is not in [0, WORLD_SIZE={ctx.world_size})")
    return ctx


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun's environment describes (``init_method="env://"``): NCCL when
    ``device_type`` is ``cuda`` (and the process's GPU set to ``cuda:LOCAL_RANK``), else gloo. Returns
    :data:`SINGLE` without torchrun; joining twice is harmless.

    Raises:
        VptError: the environment is inconsistent, or ``torch.distributed`` is not available.
    """
    ctx = env_context()
    if not ctx.enabled:
        return ctx
    import torch.distributed as dist

    if not dist.is_available():
        raise VptError("this PyTorch build has no torch.distributed; run one process")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        # Rank 0 alone writes the run's last files (the unfamiliar-image reference decodes the images
        # when there is no cache) while the others wait at a barrier: a generous timeout, not NCCL's 10 min.
        dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(hours=2))
        # Leave the group while the interpreter is still whole: without it gloo's worker threads can
        # abort the process at exit ("terminate called without an active exception", pytorch#190489).
        atexit.register(_leave)
    return ctx


def _leave() -> None:
    """Destroy the process group this module joined (at exit; nothing when it is gone already)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA job, else ``device`` unchanged."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def _comm_device() -> torch.device:
    """Where collective tensors must live: the process's GPU for NCCL (it reduces CUDA tensors only),
    the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_grads(ctx: DistContext, params) -> None:
    """Sum the gradients of ``params`` over the ranks, in place (one coalesced all-reduce; a missing
    gradient counts as zero)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_comm_device())
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_(ctx: DistContext, tensor: torch.Tensor, src: int = 0) -> None:
    """Overwrite ``tensor`` on every rank with rank ``src``'s, in place (nothing in one process)."""
    if not ctx.enabled:
        return
    t = tensor.to(_comm_device())
    torch.distributed.broadcast(t, src=src)
    tensor.copy_(t)


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """``values`` summed over the ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def all_gather_rows(ctx: DistContext, local: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``local`` along ``dim`` in rank order (shares may differ in size along
    ``dim``; they are padded for the collective and cut back). The result is on ``local``'s device."""
    if not ctx.enabled:
        return local
    import torch.distributed as dist

    home, local = local.device, local.to(_comm_device())
    sizes = torch.zeros(ctx.world_size, dtype=torch.long, device=local.device)
    sizes[ctx.rank] = local.shape[dim]
    dist.all_reduce(sizes)
    most = int(sizes.max())
    shape = list(local.shape)
    shape[dim] = most
    padded = local.new_zeros(shape)
    padded.narrow(dim, 0, local.shape[dim]).copy_(local)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    if padded.dtype.is_floating_point and padded.element_size() == 2:  # gloo lacks some 16-bit types: move the bytes
        raw = padded.contiguous().view(torch.uint8)
        parts = [torch.empty_like(raw) for _ in range(ctx.world_size)]
        dist.all_gather(parts, raw)
        parts = [p.view(padded.dtype) for p in parts]
    else:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p.narrow(dim, 0, int(s)) for p, s in zip(parts, sizes.tolist())], dim=dim).to(home)


class _Span:
    """A contiguous share of a dataset with :meth:`ManifestDataset.view`'s signature: local index ``i`` is
    image ``start + i`` (so augmentation draws, seeded by the image's index, are those of one process)."""

    def __init__(self, dataset, span: range) -> None:
        self.dataset, self.span = dataset, span
        self.data_config = getattr(dataset, "data_config", None)

    def __len__(self) -> int:
        return len(self.span)

    def view(self, index: int, key: int, augment: bool):
        return self.dataset.view(self.span[index], key, augment)


def sharded_cache_builder(ctx: DistContext, builder):
    """A callable with :meth:`vptcli.feature_cache.FeatureCache.build`'s signature: each rank runs
    ``builder`` on its contiguous share of the images, the shares are all-gathered, and rank 0 alone writes
    the on-disk copy (``cache_dir``). A cache file every rank can read is loaded instead.

    Raises:
        VptError: fewer images than ranks (a rank would have nothing to cache).
    """
    from pathlib import Path

    from vptcli.feature_cache import FeatureCache
    from vptcli.fsutil import atomic_save_safetensors

    def build(model, dataset, *, key, cache_dir=None, progress=None, **kwargs):
        final = FeatureCache.final_key(key, dataset)
        path = Path(cache_dir) / f"{final}.safetensors" if cache_dir is not None else None
        everyone_has_it = all_reduce_sum(ctx, [float(path is not None and path.is_file())])[0] == ctx.world_size
        if everyone_has_it:
            return builder(model, dataset, key=key, cache_dir=cache_dir, progress=progress, **kwargs)
        span = ctx.span(len(dataset))
        if len(dataset) < ctx.world_size:
            raise VptError(f"{len(dataset)} images for {ctx.world_size} processes: every process needs at least one")
        share = _Span(dataset, span)
        views = kwargs.get("views", 1)
        step = (lambda d: progress(d * ctx.world_size)) if progress is not None else None  # the job's progress, roughly
        part = builder(model, share, key=key, cache_dir=None, progress=step, **kwargs)
        hidden = all_gather_rows(ctx, part.hidden, dim=1)
        if progress is not None:
            progress(views * len(dataset))
        if ctx.is_main and path is not None:
            atomic_save_safetensors(path, {"hidden": hidden}, {"key": final, "start_block": str(part.start_block)})
        return FeatureCache(hidden=hidden, start_block=part.start_block, key=final)

    return build


__all__ = ["SINGLE", "DistContext", "all_gather_rows", "all_reduce_grads", "all_reduce_sum", "device_for", "env_context",
           "init_from_env", "sharded_cache_builder"]
