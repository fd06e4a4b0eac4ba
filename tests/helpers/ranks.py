"""Functions spawned ranks run in tests (importable in the fresh processes ``torch.multiprocessing`` starts)."""

from mim_nnunet.pretrain import distributed as D


def check_paths_rank(rank: int, world_size: int, payload: dict) -> None:
    """Join a gloo group and check this rank's path (``payload["paths"][rank]``) as the torchrun path does."""
    D.init_group(rank, world_size, "cpu")
    try:
        D.check_shared_paths([payload["paths"][rank]], wait_s=0)
    finally:
        D.close_group()
