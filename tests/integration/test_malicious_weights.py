"""A weights file carrying code, through the real ``nnUNetv2_train``: with ``-pretrained_weights FILE`` and
with ``--c`` / ``--val`` on a model folder holding such a checkpoint, our trainers refuse it in one line,
exit status 2, and the code never runs (its marker file never appears). No training happens: two 32^3
cases are planned and preprocessed (nnU-Net's initialize reads the preprocessed folder; the fingerprint's intensity
statistics from fewer voxels, ``helpers.commands.plan_with_fewer_samples``), nothing more."""

from pathlib import Path

import pytest
import torch

from helpers.commands import command, nnunet_env, plan_with_fewer_samples, run
from helpers.synthetic import write_dataset

DATASET = 904
# one worker builds the module's planned dataset once (pytest-xdist would build it in each worker running a test)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("malicious_weights")]


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: code run by loading the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def planned(module_tmp):
    work = module_tmp("malicious")
    env = nnunet_env(work)
    write_dataset(work / "nnUNet_raw", DATASET, num_train=2, num_test=0, shape=(32, 32, 32), seed=4)
    plan_with_fewer_samples(["-d", DATASET, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env, work)
    return {"work": work, "env": env}


def evil_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": WritesMarker(marker), "trainer_name": "nnUNetTrainerMiM"}, path)
    return path


def refused(result, trainer: str, path: Path) -> str:
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{trainer}: error: {path}: refused: the file holds Python code or objects"), last
    assert "weights_only" not in result.stdout + result.stderr
    return last


def test_pretrained_weights_carrying_code_are_refused_before_nnunet_loads_them(planned):
    work, env = planned["work"], planned["env"]
    marker = work / "marker_pretrained"
    evil = evil_file(work / "evil.pth", marker)
    trainer = "nnUNetTrainerMiM_tiny_10epochs"
    result = run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", trainer, "-device", "cpu",
                  "-pretrained_weights", evil], env, work, ok=False)
    last = refused(result, trainer, evil)
    assert "`mim_nnunet expand-weights`" in last and "`mim_nnunet import-official`" in last
    assert not marker.exists()


@pytest.mark.parametrize("trainer, flag, name",
                         [("nnUNetTrainerSwinUNETR_fs12_1epoch", "--c", "checkpoint_latest.pth"),
                          ("nnUNetTrainerMiMScratch_tiny_1epoch", "--val", "checkpoint_final.pth")])
def test_a_model_folder_checkpoint_carrying_code_is_refused_by_continue_and_val(planned, trainer, flag, name):
    work, env = planned["work"], planned["env"]
    marker = work / f"marker_{flag.strip('-')}"
    model = Path(env["nnUNet_results"]) / f"Dataset{DATASET:03d}_MiMSynthetic" / f"{trainer}__nnUNetPlans__3d_fullres"
    fold = model / "fold_0"
    evil = evil_file(fold / name, marker)
    before = evil.read_bytes()
    result = run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", trainer, "-device", "cpu", flag],
                 env, work, ok=False)
    last = refused(result, trainer, evil)
    assert last.endswith("replace it with a copy you trust, or delete it and train the fold again")
    assert not marker.exists() and evil.read_bytes() == before
