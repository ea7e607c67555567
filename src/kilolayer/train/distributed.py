"""Scale-out: one process, or DDP / FSDP2 under ``torchrun`` (gloo on CPU, nccl on GPU).

FSDP2 shards every KiloBlock (``fully_shard`` per block, then the root for embeddings and head) and
checkpoints through ``torch.distributed.checkpoint`` (each rank writes its shards). DCP's reader
unpickles; here it is restricted to DCP's own metadata classes and ``weights_only`` loading, so a
checkpoint folder can never run code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import KiloError


@dataclass
class Parallel:
    """Where this process sits: rank, world size, device, and the strategy ("single", "ddp" or "fsdp")."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    strategy: str = "single"
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for training: the model itself, DDP around it, or the model sharded in place."""
        if self.strategy == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.model.layers:
                fully_shard(block)
            fully_shard(model)
        return model

    def gradient_sync(self, wrapped: nn.Module, sync: bool):
        """Context for one micro-step of gradient accumulation: all-reduce gradients only on the last."""
        if self.strategy == "ddp" and not sync:
            return wrapped.no_sync()
        if self.strategy == "fsdp":
            wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def main_first(self, work):
        """Run ``work()`` on rank 0, then on the others (which then find rank 0's caches).

        A KiloError on rank 0 is re-raised on every rank instead of leaving them waiting at a barrier.
        """
        if self.world_size == 1:
            return work()
        outcome = [None]
        result = None
        if self.is_main:
            try:
                result = work()
            except KiloError as error:
                outcome[0] = str(error)
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            raise KiloError(outcome[0])
        if not self.is_main:
            result = work()
        return result

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any (a signal or time limit seen by one rank stops all)."""
        if self.world_size == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def teardown(self) -> None:
        if self.owns_process_group:
            dist.destroy_process_group()


def setup(strategy: str, device: torch.device | None = None) -> Parallel:
    """Parallel for this process: single when not launched by torchrun (on ``device``, else the first GPU when
    there is one), else join (or reuse) the process group, one GPU per local rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size == 1 and not dist.is_initialized():
        return Parallel(device=device or (torch.device("cuda", 0) if cuda else torch.device("cpu")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Parallel(dist.get_rank(), dist.get_world_size(), device, strategy, owns)


def unwrap(wrapped: nn.Module) -> nn.Module:
    """The model inside DDP (FSDP2 shards in place, so the model is the wrapped module)."""
    return wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a DTensor (e.g. FSDP2's total grad norm), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# ---------------------------------------------------------------- sharded checkpoints (FSDP2 + DCP)

def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank writes its shards of the model and optimizer state into ``folder`` (collective).

    Before the first step there are no Adam moments, and ``get_state_dict`` would create them with a
    fake step (shifting Adam's bias correction by one): then only the model is saved.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer.state:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    else:
        state = {"model": get_model_state_dict(model)}
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, with_optimizer: bool) -> None:
    """Read ``folder``'s shards into the sharded model and optimizer (collective; any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

    reader, planner = _safe_dcp_loaders(folder)
    if with_optimizer:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, storage_reader=reader, planner=planner)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, storage_reader=reader, planner=planner)
        set_model_state_dict(model, state["model"])
        optimizer.state.clear()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (collective; rank 0 gets the tensors, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` and nothing else: only its own classes and torch dtypes resolve."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_METADATA_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not DCP metadata")


def _safe_dcp_loaders(folder: Path):
    """DCP's file reader and default planner, with both unpickling steps made safe.

    DCP (torch 2.x) reads ``.metadata`` with ``pickle.load`` and non-tensor entries (optimizer steps,
    param groups) with ``torch.load(weights_only=False)``: here the first goes through
    ``_MetadataUnpickler``, the second through ``weights_only=True``.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeReader(str(folder)), SafeLoadPlanner()
