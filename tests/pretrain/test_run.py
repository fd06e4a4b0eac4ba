"""The plan is the run's configuration: an edited plan is kept and drives the run, settings.json says
where each value came from, and --replan (or other data) plans again."""

import json

import numpy as np
import pytest
import torch

from helpers.volumes import ct_array, write
from mim_nnunet.common.layout import plan_file
from mim_nnunet.data.pipeline import prepare
from mim_nnunet.pretrain.engine import build
from mim_nnunet.pretrain.settings import resolve_settings


@pytest.fixture
def prepared(tmp_path, nnunet_dirs):
    folder = tmp_path / "scans"
    for i in range(2):
        write(ct_array((16, 24, 20), seed=i), folder / f"s{i}.nii.gz")
    run = lambda **kw: prepare([str(folder)], name="cfg", size="tiny", num_processes=1, log=lambda *_: None, **kw)
    return run, run()


def test_an_edited_plan_is_kept_and_drives_the_run(prepared, tmp_path):
    run, first = prepared
    path = plan_file(first.folder, "hybrid", "tiny")
    plan = json.loads(path.read_text(encoding="utf-8"))
    plan["lr"] = 0.002                                           # for the plan's effective batch (336 sub-volumes)
    plan["backbone_sizes"]["decoder_depth"] = 1
    plan["backbone_sizes"]["depths"] = [1, 1, 1, 2]
    plan["mim"]["r2"] = 0.75
    path.write_text(json.dumps(plan), encoding="utf-8")

    again = run()
    assert again.plan["lr"] == 0.002 and again.store == first.store
    assert set(again.plan_edits) == {"lr", "backbone_sizes", "backbone_sizes.decoder_depth",
                                     "backbone_sizes.depths", "mim", "mim.r2"}
    settings = resolve_settings(again.plan, again.store, tmp_path / "run", 1, "cpu", input_size=[32],
                                per_device_batch=1, accumulation=2, plan_edits=again.plan_edits)
    # 2 crops x 21 sub-volumes instead of the plan's 336: the plan's (edited) lr rescaled by the rule
    assert settings.lr == pytest.approx(0.002 * (42 / 336) ** 0.5)
    assert settings.provenance["lr"].startswith("plan (edited), x sqrt(42 / 336")
    assert settings.provenance["backbone_sizes"] == "plan (edited)" and settings.provenance["mim"]["r2"] == "plan (edited)"
    assert settings.provenance["mim"]["r1"] == "plan" and settings.config.r2 == 0.75
    trainee = build(settings, torch.device("cpu"))
    assert len(trainee.model.decoder.decoder_blocks) == 1
    assert [len(getattr(trainee.model.encoder, f"blocks{i}")) for i in (1, 2, 3, 4)] == [1, 1, 1, 2]

    replanned = run(replan=True)
    assert replanned.plan_edits == [] and replanned.plan["lr"] != 0.002
    assert json.loads(path.read_text(encoding="utf-8"))["backbone_sizes"]["decoder_depth"] == 2


def test_edited_preprocessing_values_get_a_store_of_their_own(prepared):
    run, first = prepared
    path = plan_file(first.folder, "hybrid", "tiny")
    plan = json.loads(path.read_text(encoding="utf-8"))
    plan["intensity"]["CT"]["window"] = [-200.0, 300.0]
    path.write_text(json.dumps(plan), encoding="utf-8")
    edited = run()
    assert edited.store != first.store and edited.store.name.startswith(first.store.name + "_")
    case = sorted(edited.store.glob("*.npy"))[0]
    old, new = np.load(first.store / case.name), np.load(case)
    assert not np.array_equal(old, new)                         # the new window was applied


def test_a_plan_for_other_settings_is_planned_again(prepared):
    run, first = prepared
    path = plan_file(first.folder, "hybrid", "tiny")
    plan = json.loads(path.read_text(encoding="utf-8"))
    plan["lr"] = 0.5
    path.write_text(json.dumps(plan), encoding="utf-8")
    other_target = run(gpu_memory_target_gb=40.0)
    assert other_target.plan["gpu_memory_target_gb"] == 40.0 and other_target.plan["lr"] != 0.5


def test_a_cpu_run_plans_its_batch_for_the_cpus_memory(tmp_path, nnunet_dirs, monkeypatch):
    from mim_nnunet.cli.pretrain import build_parser, request_from
    from mim_nnunet.data import planner
    from mim_nnunet.pretrain.run import settings_for

    folder = tmp_path / "scans"
    for i in range(2):
        write(ct_array((16, 24, 20), seed=i), folder / f"s{i}.nii.gz")
    monkeypatch.setattr(planner, "available_memory_gb", lambda: 12.0, raising=False)
    args = build_parser().parse_args(["-d", str(folder), "-o", "cpu", "-size", "tiny", "-np", "1", "-device", "cpu"])
    settings = settings_for(request_from(args), 1, "cpu", log=lambda *_: None)
    plan = json.loads(plan_file(nnunet_dirs["nnUNet_preprocessed"] / "MiM_cpu", "hybrid", "tiny")
                      .read_text(encoding="utf-8"))
    # 12 GB x 0.75 / 1 process = 9 -> 8 GB, not the 24 GB GPU default
    assert plan["gpu_memory_target_gb"] == 8.0 and "sized for the CPU" in plan["explain"]["gpu_memory_target_gb"]
    # S = 32 x 96 x 96 (the scans' 2.5 x 0.8 x 0.9 mm), fp32 on the CPU: a tiny crop is (0.251 GB x 21
    # sub-volumes + 0.165 GB kept) / 3 = 1.81 GB beside the fixed 1.19 GB; (8 - 2 - 1.19) / 1.81 = 2.7 -> 2 crops
    # per step (a divisor of 16), 8 accumulated (at 24 GB: 11 fit -> 8 crops, about 15.7 GB in fp32)
    assert plan["input_size"] == [32, 96, 96]
    assert (settings.per_device_batch, settings.accumulation) == (2, 8)
