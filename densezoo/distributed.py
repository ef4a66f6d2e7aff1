"""torch.distributed set-up for ``torchrun`` and exact reductions of metrics across processes."""
import os
from dataclasses import dataclass
from typing import Dict

import torch
import torch.distributed as dist

__all__ = ['DistInfo', 'init_distributed', 'all_reduce_sums', 'barrier']


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


def init_distributed(device: str = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = (device or ('cuda' if torch.cuda.is_available() else 'cpu')).startswith('cuda')
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
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
