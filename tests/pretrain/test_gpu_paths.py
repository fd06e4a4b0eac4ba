"""What a GPU run meets that a CPU run does not, shown on the CPU by patching what torch reports: the GPU
a rank takes, precision, RNG states and loss-scaler state on resume, the CUDA backend settings, CPU
threads per GPU rank, validation under the training's autocast, and the multi-node shared-path check."""

import os
import socket

import pytest
import torch

from mim_nnunet.common.errors import MimError
from mim_nnunet.pretrain import checkpoint as C
from mim_nnunet.pretrain import distributed as D
from mim_nnunet.pretrain import engine as E
from mim_nnunet.pretrain.settings import RunSettings, continued_settings, pick_precision


@pytest.fixture
def backends():
    """Restore the global backend switches a test changes."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.get_num_threads())
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
     torch.backends.cuda.matmul.allow_tf32) = saved[:4]
    torch.set_float32_matmul_precision(saved[4])
    torch.use_deterministic_algorithms(saved[5], warn_only=saved[6])
    if saved[7] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[7]
    torch.set_num_threads(saved[8])


@pytest.mark.parametrize("visible, local_rank, expected", [(1, 0, 0), (1, 3, 0), (4, 3, 3), (8, 1, 1)])
def test_a_rank_takes_the_gpu_it_sees(monkeypatch, visible, local_rank, expected):
    """One GPU visible per process (SLURM --gpus-per-task=1, CUDA_VISIBLE_DEVICES per rank): GPU 0 for every
    local rank; all of the node's GPUs visible: the local rank's own."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert D.local_device("cuda", local_rank) == torch.device("cuda", expected) and chosen == [expected]


def test_a_rank_that_sees_some_but_not_its_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    with pytest.raises(MimError, match="local rank 3 needs GPU 3, but this process sees 2 GPU"):
        D.local_device("cuda", 3)


def test_auto_precision_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch):
    # a V100/T4: bf16 only through emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)   # A100, H100
    assert pick_precision("auto", "cuda") == "bf16"
    assert pick_precision("bf16", "cuda") == "bf16" and pick_precision("auto", "cpu") == "fp32"


def _saved(device, precision, world=1):
    return RunSettings(name="c", backbone="hybrid", size="tiny", out_dir="o", store="s", mim={"input_size": [32] * 3},
                       backbone_sizes={}, per_device_batch=1, accumulation=2, world_size=world, steps=10,
                       warmup_steps=1, lr=1e-4, device=device, precision=precision).to_dict()


def test_a_continued_run_keeps_its_precision(monkeypatch):
    """--c does not pick precision again: a card that would pick another one (here fp16: no native bf16)
    continues in the run's own; a CPU run continued on a GPU stays fp32 (its loss scaler was never on)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    quiet = dict(log=lambda *_: None)
    assert continued_settings(_saved("cuda", "bf16"), 1, "cuda", "o", "s", **quiet).precision == "bf16"
    assert continued_settings(_saved("cpu", "fp32"), 1, "cuda", "o", "s", **quiet).precision == "fp32"
    said = []
    assert continued_settings(_saved("cuda", "fp16"), 1, "cpu", "o", "s", log=said.append).precision == "fp32"
    assert said == ["continuing on the CPU: fp32 instead of the run's fp16"]


def test_a_disabled_scalers_empty_state_is_not_loaded_into_an_enabled_one(tmp_path):
    """A bf16 or fp32 run saves its disabled scaler's state as {}, which GradScaler.load_state_dict refuses;
    resuming into an enabled (fp16) scaler starts it fresh instead of failing."""
    with pytest.raises(RuntimeError):                               # torch's own behaviour, the reason for the guard
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(torch.amp.GradScaler("cpu", enabled=False).state_dict())
    from mim_nnunet.common.layout import CHECKPOINT
    from mim_nnunet.optim import WarmupCosineLR

    def trainee(enabled):
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters())
        return E.Trainee(model=model, optimizer=optimizer, scheduler=WarmupCosineLR(optimizer, 10, 1),
                         scaler=torch.amp.GradScaler("cpu", enabled=enabled))
    saved = trainee(False)
    C.save_checkpoint(tmp_path / CHECKPOINT, model=saved.model, optimizer=saved.optimizer, scaler=saved.scaler,
                      step=3, settings={}, rng=[C.capture_rng()])
    settings = RunSettings.from_dict({**_saved("cuda", "fp16"), "out_dir": str(tmp_path)})
    resumed = trainee(True)
    assert E.restore(resumed, settings, True, 0, 1) == 3
    assert resumed.scaler.is_enabled() and resumed.scaler.get_scale() == 2.0 ** 16         # a fresh scaler
    assert torch.equal(resumed.model.weight, saved.model.weight)


def _fake_cuda(monkeypatch, visible, current=0):
    """torch.cuda as a process that sees ``visible`` GPUs: per-GPU RNG states set by index (an index past the
    visible ones fails as torch's does: its default generators are a tuple of the visible GPUs)."""
    states = {}
    generators = tuple(range(visible))

    def set_rng_state(state, device="cuda"):
        index = current if device == "cuda" else torch.device(device).index if not isinstance(device, int) else device
        states[generators[index]] = state.clone()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((8,), 10 + current, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((8,), 10 + i, dtype=torch.uint8)
                                                                  for i in range(visible)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    return states


def test_rng_states_restore_with_another_number_of_visible_gpus(monkeypatch):
    """A rank saves the RNG state of its own GPU only; a checkpoint written while a process saw 4 GPUs
    restores in a process that sees 1 (4 spawned ranks continued as 2 nodes x 2, one GPU per process)."""
    _fake_cuda(monkeypatch, visible=4, current=2)
    saved = C.capture_rng()
    assert [s.tolist() for s in saved["cuda"]] == [[12] * 8]              # rank on GPU 2: its state alone
    states = _fake_cuda(monkeypatch, visible=1, current=0)
    C.restore_rng(saved)
    assert states[0].tolist() == [12] * 8                                # onto this process's only GPU
    # a checkpoint of the earlier layout (every visible GPU's state): this rank's GPU index picks its own
    older = {**saved, "cuda": [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(4)]}
    states = _fake_cuda(monkeypatch, visible=1, current=0)
    C.restore_rng(older)
    assert states[0].tolist() == [10] * 8


def test_cuda_backends_are_set_as_nnunet_trains_or_deterministic(backends):
    E.configure_backends(torch.device("cuda", 0), deterministic=False)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    assert not torch.are_deterministic_algorithms_enabled()
    E.configure_backends(torch.device("cuda", 0), deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest" and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_gpu_rank_caps_its_cpu_threads_and_sets_the_backends(monkeypatch, backends):
    """-num_gpus 4 on an 8-core machine: each spawned GPU rank takes 8 / 4 = 2 CPU threads (torchrun's
    OMP_NUM_THREADS, when set, is kept), and its CUDA backends are set before training."""
    seen = {}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(D, "usable_cores", lambda: 8)
    monkeypatch.setattr(D, "local_device", lambda device, local_rank: torch.device("cuda", local_rank))
    monkeypatch.setattr(D, "init_group", lambda *a, **k: None)
    monkeypatch.setattr(E, "_train", lambda rank, world, device, settings, resume: seen.update(
        threads=torch.get_num_threads(), benchmark=torch.backends.cudnn.benchmark, device=device))
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = False
    E.train_rank(1, 4, {"settings": _saved("cuda", "bf16", world=4), "resume": False})
    assert seen == {"threads": 2, "benchmark": True, "device": torch.device("cuda", 1)}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                     # torchrun's
    torch.set_num_threads(1)
    E.train_rank(1, 4, {"settings": _saved("cuda", "bf16", world=4), "resume": False})
    assert seen["threads"] == 1


def test_deterministic_is_a_switch_of_mim_pretrain():
    from mim_nnunet.cli.pretrain import build_parser, operational_from

    parser = build_parser()
    assert operational_from(parser.parse_args(["-d", "x", "--deterministic"]))["deterministic"] is True
    assert "deterministic" not in operational_from(parser.parse_args(["-d", "x"]))
    assert RunSettings.from_dict({**_saved("cuda", "bf16"), "deterministic": True}).deterministic


def test_every_rank_names_the_path_a_rank_cannot_see(tmp_path):
    """Rank 1 stands for a node without the shared filesystem: both ranks stop with one line naming rank 1,
    its host and the path; rank 0 alone in a group of one says the same of itself."""
    seen = tmp_path / "store"
    seen.mkdir()
    missing = tmp_path / "elsewhere" / "store"
    from helpers.ranks import check_paths_rank
    with pytest.raises(MimError, match=f"rank 1 on {socket.gethostname()} cannot see {missing}, written by rank 0"):
        D.spawn(check_paths_rank, 2, {"paths": [str(seen), str(missing)]})
    D.check_shared_paths([seen])                                     # no group, nothing missing: nothing said
    with pytest.raises(MimError, match="rank 0 on .* cannot see .*elsewhere.*shared at the same path"):
        D.check_shared_paths([seen, missing], wait_s=0)
    # a file that shows up late (a network filesystem's cache) is waited for
    import threading
    late = tmp_path / "late.json"
    threading.Timer(1.5, lambda: late.write_text("{}", encoding="utf-8")).start()
    D.check_shared_paths([late], wait_s=30)
