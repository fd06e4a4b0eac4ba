"""Files nnU-Net opens for our trainers (-pretrained_weights, --c, --val): loaded without running code,
refused in one line that never advises loading unsafely. The real nnUNetv2_train runs are in
tests/integration/test_malicious_weights.py."""

import inspect
import sys

import numpy as np
import pytest
import torch

from helpers.commands import REPO
from mim_nnunet.common.errors import MimError
from mim_nnunet.common.safe_load import UnsafeFileError
from mim_nnunet.finetune.loading import (
    PRETRAINED_REMEDY,
    check_nnunet_file,
    guard_pretrained_weights,
    load_nnunet_checkpoint,
)
from mim_nnunet.finetune.trainer import RunGuards


class WritesMarker:
    """Unpickling this runs ``open(marker, "w")``: the code a malicious weights file carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_loads_numpy_scalars_that_nnunet_logs(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"trainer_name": "T", "logging": {"ema": [np.float64(0.5), np.float32(0.25), np.int64(3)]},
                "init_args": {"fold": 0, "device": torch.device("cpu")},
                "network_weights": {"w": torch.ones(2)}}, path)
    ckpt = load_nnunet_checkpoint(path)
    assert ckpt["trainer_name"] == "T" and ckpt["logging"]["ema"] == [0.5, 0.25, 3]
    assert torch.equal(ckpt["network_weights"]["w"], torch.ones(2))
    check_nnunet_file(path)                                  # the mapped check passes too


def test_refuses_pickled_code_without_running_it_and_reports_bad_files(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "x": WritesMarker(marker)}, evil)
    for load in (load_nnunet_checkpoint, check_nnunet_file):
        with pytest.raises(UnsafeFileError) as refused:
            load(evil)
        message = str(refused.value)
        assert message.startswith(f"{evil}: refused: the file holds Python code or objects") and "\n" not in message
        assert "(a reference to io.open)" in message
        assert "weights_only" not in message and "False" not in message    # never PyTorch's unsafe advice
        assert message.endswith("replace it with a copy you trust, or delete it and train the fold again")
    with pytest.raises(UnsafeFileError) as refused:                    # as a -pretrained_weights file
        check_nnunet_file(evil, remedy=PRETRAINED_REMEDY)
    assert all(way in str(refused.value) for way in (".safetensors", "`mim_nnunet expand-weights`",
                                                      "`mim_nnunet import-official`"))
    assert not marker.exists()
    cls = tmp_path / "cls.pth"
    torch.save({"cls": torch.nn.Linear}, cls)                 # a class reference: code, not data
    with pytest.raises(UnsafeFileError, match=r"cls.pth: refused: .*torch.nn.modules.linear.Linear"):
        load_nnunet_checkpoint(cls)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(MimError, match="truncated.pth: not a readable"):
        load_nnunet_checkpoint(truncated)
    with pytest.raises(MimError, match="missing.pth: checkpoint not found"):
        load_nnunet_checkpoint(tmp_path / "missing.pth")


def test_a_plain_pickle_is_refused_too(tmp_path):
    """A file from pickle.dump (not torch.save) with code: PyTorch's legacy path, same refusal."""
    import pickle
    marker, path = tmp_path / "marker", tmp_path / "plain.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"network_weights": WritesMarker(marker)}, fh)
    with pytest.raises(UnsafeFileError, match=r"plain.pkl: refused: .*pickle instruction"):
        check_nnunet_file(path)
    assert not marker.exists()


def test_the_pretrained_weights_loader_nnunet_train_calls_checks_first(tmp_path):
    """The wrapped ``load_pretrained_weights`` that ``nnunetv2.run.run_training`` calls: an unsafe file goes to
    the trainer's stop and never to nnU-Net's unpickler; a safe one is loaded by nnU-Net as before."""
    import nnunetv2.run.load_pretrained_weights as own
    import nnunetv2.run.run_training as entry

    original = own.load_pretrained_weights
    marker = tmp_path / "marker"
    torch.save({"network_weights": WritesMarker(marker)}, tmp_path / "evil.pth")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    torch.save({"network_weights": {"0.weight": torch.full((2, 2), 3.0), "0.bias": torch.zeros(2)}},
               tmp_path / "good.pth")
    stops = []

    def stop(message):
        stops.append(message)
        raise SystemExit(2)
    try:
        guard_pretrained_weights(stop)
        guard_pretrained_weights(stop)                      # a second trainer: wraps nnU-Net's, not the wrapper
        assert entry.load_pretrained_weights.__wrapped__ is original
        with pytest.raises(SystemExit):
            entry.load_pretrained_weights(net, str(tmp_path / "evil.pth"))
        assert not marker.exists() and len(stops) == 1 and "evil.pth: refused" in stops[0]
        entry.load_pretrained_weights(net, str(tmp_path / "good.pth"))
        assert torch.equal(net[0].weight, torch.full((2, 2), 3.0))
    finally:
        own.load_pretrained_weights = entry.load_pretrained_weights = original


def test_every_trainer_of_ours_guards_its_loading():
    """Each class in trainers/ (MiM, scratch, ResEnc, SwinUNETR) gets RunGuards' loading hooks."""
    sys.path.insert(0, str(REPO / "trainers"))
    try:
        classes = []
        for module_file in sorted((REPO / "trainers").glob("*.py")):
            module = __import__(module_file.stem)
            classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                        if c.__module__ == module.__name__ and c.__name__.startswith("nnUNetTrainer")]
    finally:
        sys.path.remove(str(REPO / "trainers"))
    defined = sum(line.startswith("class nnUNetTrainer") for f in (REPO / "trainers").glob("*.py")
                  for line in f.read_text(encoding="utf-8").splitlines())
    assert len(classes) == defined >= 18
    for cls in classes:
        assert issubclass(cls, RunGuards), cls
        assert cls.load_checkpoint is RunGuards.load_checkpoint, cls
        assert RunGuards.__init__ in [k.__dict__.get("__init__") for k in cls.__mro__], cls
    assert "guard_pretrained_weights(self.stop)" in inspect.getsource(RunGuards.__init__)


def test_check_weights_command_reads_a_model_folder_and_never_runs_its_code(tmp_path, capsys):
    from mim_nnunet.cli.main import main
    folder = tmp_path / "nnUNetTrainerMiM__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_1").mkdir()
    torch.save({"network_weights": {"w": torch.ones(2)}, "logging": {"ema": [np.float64(0.5)]}},
               folder / "fold_0" / "checkpoint_final.pth")
    marker = tmp_path / "marker"
    torch.save({"network_weights": WritesMarker(marker)}, folder / "fold_1" / "checkpoint_final.pth")
    assert main(["check-weights", str(folder)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{folder / 'fold_0' / 'checkpoint_final.pth'}: loads without running code"
    assert out[1].startswith(f"{folder / 'fold_1' / 'checkpoint_final.pth'}: refused: the file holds Python code")
    assert len(out) == 2 and not marker.exists()
    assert main(["check-weights", str(folder / "fold_0" / "checkpoint_final.pth")]) == 0
    assert main(["check-weights", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().endswith("nothing: not found")
