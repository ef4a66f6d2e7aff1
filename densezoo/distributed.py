"""torch.distributed set-up for ``torchrun`` and exact reductions of metrics across processes."""
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.distributed as dist

from densezoo.config import check_device, require

__all__ = ['DistInfo', 'open_device', 'init_distributed', 'all_reduce_sums', 'barrier']


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def open_device(device: Optional[str], local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process for a config's ``device`` (cpu, cuda, cuda:N, mps or None: cuda when available);
    raises ``ConfigError`` with a one-line reason for a device torch does not see, before anything is built."""
    check_device(device)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cpu':
        return torch.device('cpu')
    if device == 'mps':
        require(torch.backends.mps.is_available(),
                "device='mps' but torch sees no MPS device (Apple GPU); use device=cpu or leave device unset")
        require(world_size == 1, f"device='mps' cannot train with {world_size} processes; start one process")
        return torch.device('mps')
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    require(count > 0, f'device={device!r} but torch sees no CUDA device; use device=cpu or leave device unset')
    gpus = 'cuda:0' if count == 1 else f'cuda:0..cuda:{count - 1}'
    seen = f'torch sees {count} CUDA device{"s" if count > 1 else ""} ({gpus})'
    if device == 'cuda':
        require(local_rank < count, f'LOCAL_RANK={local_rank} but {seen}; start at most {count} processes per node')
        return torch.device('cuda', local_rank)
    index = int(device.partition(':')[2])
    require(index < count, f'device={device!r} but {seen}; use an index below {count}, or device=cuda')
    require(world_size == 1, f'device={device!r} names one GPU for {world_size} processes; use device=cuda (each '
                             f'process takes the GPU of its LOCAL_RANK)')
    return torch.device('cuda', index)


def init_distributed(device: str = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA) on the
    device that ``device`` names (``open_device``)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = open_device(device, local_rank, world_size)
    use_cuda = dev.type == 'cuda'
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sums(values: Dict[str, float], info: DistInfo) -> Dict[str, float]:
    """Sum each value over all processes (exact for counts; divide afterwards for means)."""
    if not info.enabled:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                          device=info.device if info.device.type == 'cuda' else 'cpu')
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
