"""Weight sync by collective: the learner broadcasts the policy's parameters in buckets, and each
rollout worker copies them into its own parameters in place.

The group is a process group of its own (``ProcessGroupGloo`` on CPU, ``ProcessGroupNCCL`` on
GPUs, rendezvous through a ``TCPStore`` on a free port of the source's host), not
``torch.distributed``'s default group: a learner rank already has that one (the learner
ranks' group, and ``init_process_group`` runs once per process), and a rollout worker's engine
may have one of its own. verl, OpenRLHF, prime-rl and vLLM's weight-transfer examples build
such a separate "model update" group for the same reason. Member 0 is the source (learner
rank 0); members 1..N are the rollout workers.

One sync (:meth:`WeightSync.send` on the source, :meth:`WeightSync.receive` on each worker):

1. a header (version, tensor count, element count, bucket size, a hash of the names, shapes
   and dtypes) is broadcast; every member checks it against its own parameters and all agree
   (one all-reduce of an ok flag), so a mismatch raises :class:`WeightSyncError` everywhere
   instead of hanging the others;
2. the parameters, flattened in order, are cut into buckets of at most ``bucket_bytes``
   (one dtype per bucket; a tensor larger than a bucket spans several): the source copies
   each bucket's pieces into one reusable buffer and broadcasts it; a receiver broadcasts
   into its own reusable buffer and copies each piece into the parameter it belongs to
   (``param.view(-1)[a:b].copy_(...)``). Neither side ever holds a second copy of the model:
   one bucket buffer, plus, for a sharded (FSDP) source, one gathered parameter at a time.

A sharded learner's parameters are DTensors: every learner rank calls :func:`gather_params`
(``full_tensor()`` is collective over the learner ranks), and rank 0 broadcasts what it gets.
Only parameters are sent (buffers are not trained). Exact: the bytes received are the bytes
sent (tested bit-identical with gloo).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor


class WeightSyncError(RuntimeError):
    """The members of a weight sync disagree (version, parameter layout, bucket size)."""


@dataclass(frozen=True)
class Piece:
    """Elements ``[start, stop)`` of flattened tensor ``index``, at ``offset`` in its bucket."""

    index: int
    start: int
    stop: int
    offset: int


@dataclass(frozen=True)
class Bucket:
    dtype: torch.dtype
    numel: int
    pieces: tuple[Piece, ...]


def plan_buckets(
    layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int
) -> list[Bucket]:
    """Buckets of at most ``bucket_bytes`` over ``layout`` (name, shape, dtype), in order.

    A bucket holds one dtype; a tensor that does not fit the rest of a bucket continues in
    the next one (so a bucket smaller than a tensor is fine). Needs room for one element.
    """
    buckets: list[Bucket] = []
    pieces: list[Piece] = []
    used = 0  # elements in the open bucket
    dtype: torch.dtype | None = None

    def close() -> None:
        nonlocal pieces, used
        if pieces:
            buckets.append(Bucket(dtype, used, tuple(pieces)))  # type: ignore[arg-type]
        pieces, used = [], 0

    for index, (name, shape, dt) in enumerate(layout):
        size = dt.itemsize
        capacity = bucket_bytes // size
        if capacity < 1:
            raise WeightSyncError(f"a {bucket_bytes}-byte bucket cannot hold one {dt} element of {name}")
        if dt != dtype:
            close()
            dtype = dt
        numel = _numel(shape)
        start = 0
        while start < numel:
            if used == capacity:
                close()
            take = min(numel - start, capacity - used)
            pieces.append(Piece(index, start, start + take, used))
            used += take
            start += take
    close()
    return buckets


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def layout_of(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, full shape, dtype) of every parameter, in ``named_parameters`` order (tied ones once)."""
    return [(n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()]


def layout_hash(layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    h = hashlib.blake2b(digest_size=8)
    for name, shape, dtype in layout:
        h.update(f"{name}:{list(shape)}:{dtype};".encode())
    return int.from_bytes(h.digest(), "little") >> 1  # fits an int64


def gather_params(model: torch.nn.Module) -> Iterator[Tensor]:
    """Each parameter whole, in ``named_parameters`` order (a DTensor is gathered: collective)."""
    for _, p in model.named_parameters():
        data = p.detach()
        if hasattr(data, "full_tensor"):
            data = data.full_tensor()
        yield data


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's name, dtype, shape and bytes (bit-for-bit comparisons)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class WeightSync:
    """One member of the weight-sync group (member 0: the source).

    ``backend``: ``gloo`` (CPU buffers) or ``nccl`` (buffers on this process's current CUDA
    device). All members construct it at the same time (the store's host waits for all).
    """

    def __init__(
        self,
        address: str,
        port: int,
        rank: int,
        world: int,
        *,
        backend: str = "gloo",
        bucket_bytes: int = 256 * 2**20,
        timeout_s: float = 600.0,
    ) -> None:
        import torch.distributed as dist

        if world < 2:
            raise WeightSyncError(f"a weight-sync group needs a source and a receiver, got world {world}")
        if backend not in ("gloo", "nccl"):
            raise WeightSyncError(f"weight-sync backend must be gloo or nccl, got {backend!r}")
        timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=timeout)
        store = dist.PrefixStore("klear-weight-sync", self.store)
        if backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world, options)
        else:
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(store, rank, world, timeout)
        self.rank, self.world, self.bucket_bytes = rank, world, int(bucket_bytes)
        self.version = 0

    # -- one sync -------------------------------------------------------------------------

    def send(self, model: torch.nn.Module, version: int, params: Iterable[Tensor] | None = None) -> int:
        """Broadcast ``model``'s parameters (member 0). ``params``: the whole tensors in order
        (default :func:`gather_params`); returns the bytes sent."""
        if self.rank != 0:
            raise WeightSyncError("only member 0 sends")
        layout = layout_of(model)
        buckets = self._agree(layout, version)
        source = iter(params if params is not None else gather_params(model))
        current: tuple[int, Tensor] | None = None
        sent = 0
        buffer: Tensor | None = None
        for bucket in buckets:
            buffer = self._buffer(buffer, bucket)
            for piece in bucket.pieces:
                while current is None or current[0] != piece.index:
                    nxt = next(source)
                    current = (0 if current is None else current[0] + 1, nxt.reshape(-1))
                flat = current[1]
                buffer[piece.offset : piece.offset + piece.stop - piece.start].copy_(
                    flat[piece.start : piece.stop]
                )
            self._broadcast(buffer[: bucket.numel])
            sent += bucket.numel * bucket.dtype.itemsize
        for _ in source:  # a sharded source: every learner rank takes part in every gather
            pass
        self.version = version
        return sent

    def receive(self, model: torch.nn.Module, version: int) -> int:
        """Receive a sync into ``model``'s parameters in place (members 1..N); returns its version."""
        if self.rank == 0:
            raise WeightSyncError("member 0 is the source")
        layout = layout_of(model)
        buckets = self._agree(layout, version)
        flats = [p.data.view(-1) if p.data.is_contiguous() else None for p in model.parameters()]
        params = list(model.parameters())
        buffer: Tensor | None = None
        with torch.no_grad():
            for bucket in buckets:
                buffer = self._buffer(buffer, bucket)
                chunk = buffer[: bucket.numel]
                self._broadcast(chunk)
                for piece in bucket.pieces:
                    src = chunk[piece.offset : piece.offset + piece.stop - piece.start]
                    flat = flats[piece.index]
                    if flat is None:  # a non-contiguous parameter: copy through its flattened view
                        p = params[piece.index]
                        whole = p.data.reshape(-1).clone()
                        whole[piece.start : piece.stop].copy_(src)
                        p.data.copy_(whole.view_as(p.data))
                    else:
                        flat[piece.start : piece.stop].copy_(src)
        self.version = version
        return version

    def close(self) -> None:
        group = getattr(self, "group", None)
        if group is not None and hasattr(group, "shutdown"):
            try:
                group.shutdown()
            except Exception:  # a member already gone
                pass
        self.group = None
        self.store = None

    # -- internals ------------------------------------------------------------------------

    def _agree(self, layout, version: int) -> list[Bucket]:
        """Broadcast the source's header; every member checks it; all learn whether all agree."""
        own = [
            version,
            len(layout),
            sum(_numel(s) for _, s, _ in layout),
            self.bucket_bytes,
            layout_hash(layout),
        ]
        header = torch.tensor(own, dtype=torch.int64, device=self.device)
        self._broadcast(header)
        got = header.tolist()
        problem = ""
        if got[0] != version:
            problem = f"the source sends version {got[0]}, member {self.rank} expects {version}"
        elif got[3] != self.bucket_bytes:
            problem = f"bucket size {got[3]} bytes at the source, {self.bucket_bytes} at member {self.rank}"
        elif got[1:3] != own[1:3] or got[4] != own[4]:
            problem = (
                f"parameter layout differs: the source has {got[1]} tensors / {got[2]} elements, member "
                f"{self.rank} {own[1]} / {own[2]} (or their names, shapes or dtypes differ)"
            )
        ok = torch.tensor([0 if problem else 1], dtype=torch.int64, device=self.device)
        self._wait(self.group.allreduce([ok], _min_opts()))
        if problem:
            raise WeightSyncError(f"weight sync refused: {problem}")
        if int(ok.item()) != 1:
            raise WeightSyncError("weight sync refused: another member's parameters or version differ")
        return plan_buckets(layout, self.bucket_bytes)

    def _buffer(self, buffer: Tensor | None, bucket: Bucket) -> Tensor:
        """A reusable buffer of the bucket's dtype, big enough for the largest bucket so far."""
        if buffer is None or buffer.dtype != bucket.dtype or buffer.numel() < bucket.numel:
            capacity = max(bucket.numel, self.bucket_bytes // bucket.dtype.itemsize)
            buffer = torch.empty(capacity, dtype=bucket.dtype, device=self.device)
        return buffer

    def _broadcast(self, tensor: Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._wait(self.group.broadcast([tensor], opts))

    @staticmethod
    def _wait(work) -> None:
        work.wait()


def _min_opts():
    import torch.distributed as dist

    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.MIN
    return opts
