"""nnssl's checkpoint format out (export-nnssl) and in (import-nnssl): the file as nnU-Net master's pretrained
route reads it, round trips with identical tensors, a checkpoint written from nnssl's documented schema, and
one-line refusals."""

import json
import subprocess

import pytest
import torch

from helpers.commands import command
from helpers.exports import hybrid_export, raw_sha1
from helpers.nnssl_fixture import SMALL_ARCH_KWARGS, adaptation_plan, build_network, write_nnssl_checkpoint
from mim_nnunet.backbones import build_encoder
from mim_nnunet.networks.resenc_unet import build_resenc_unet, load_encoder_state
from mim_nnunet.weights.card import card_path
from mim_nnunet.weights.export import ExportError, export_encoder, load_export
from mim_nnunet.weights.nnssl import NnsslCheckpoint, export_nnssl, import_nnssl

# the fields of nnssl's dataclasses (AdaptationPlan, Plan, ConfigurationPlan, DynamicArchitecturePlans): their
# from_dict / constructors take exactly these
PLAN_FIELDS = {"dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
               "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used"}
CONFIG_FIELDS = {"data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes", "use_mask_for_norm",
                 "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_mask", "resampling_fn_mask_kwargs",
                 "spacing", "patch_size"}
ADAPTATION_FIELDS = {"architecture_plans", "pretrain_plan", "pretrain_num_input_channels",
                     "recommended_downstream_patchsize", "key_to_encoder", "key_to_stem", "keys_to_in_proj",
                     "key_to_lpe"}
CT = {"CT": {"scheme": "ct_window", "window": [-1000.0, 1000.0], "background": 0.0}}
RUN_FIELDS = {"data": {"collection": "ct", "sources": ["/data/ct"], "cases": {"/data/ct": {"CT": 3}}, "num_cases": 3,
                       "leakage_checks": []},
              "preprocessing": {"orientation": "RAS", "array_axes": ["z", "y", "x"]},
              "training": {"effective_batch_crops": 2, "subvolumes_per_crop": 5, "effective_batch_subvolumes": 10,
                           "lr": 1e-4, "lr_rule": "plan", "schedule": "cosine", "precision": "fp32",
                           "device": "cpu", "world_size": 1, "device_names": ["cpu x"], "seed": 0,
                           "wall_time_s": 12.5, "mim": {"levels": 3}},
              "validation": {"crops": 2, "held_out_cases": 0, "first": {"step": 0, "rec_l1": 1.0},
                             "last": {"step": 4, "rec_l1": 0.5}}}


@pytest.fixture(scope="module")
def resenc_export(tmp_path_factory):
    """A resenc 'tiny' export with a run's record, its encoder's tensors moved off the initialisation."""
    folder = tmp_path_factory.mktemp("resenc")
    torch.manual_seed(0)
    encoder, _ = build_encoder("resenc", "tiny", 1, (64, 32, 32))
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    weights, _ = export_encoder(encoder, "resenc", "tiny", folder / "r.safetensors", in_channels=1,
                                input_size=(64, 32, 32), spacing=[1.5, 1.0, 1.0], normalisation=CT,
                                manifest_hash="ab" * 32, steps=4, **RUN_FIELDS)
    return weights


def nnunet_master_load(network, checkpoint):
    """nnU-Net master's PretrainedTrainer.load_pretrained_weights, as its source documents it (same input
    channels): keys under key_to_encoder / key_to_stem lose that prefix and load strictly into those modules."""
    ckp = torch.load(checkpoint, weights_only=True)
    plan, weights = ckp["nnssl_adaptation_plan"], ckp["network_weights"]
    for located, module in ((plan["key_to_encoder"], network.key_to_encoder), (plan["key_to_stem"], network.key_to_stem)):
        part = {k[len(located):].lstrip("."): v for k, v in weights.items() if k.startswith(located)}
        network.get_submodule(module).load_state_dict(part, strict=True)


def test_export_nnssl_writes_the_schema_and_loads_strictly_into_the_network_its_plan_builds(resenc_export, tmp_path):
    checkpoint, plan_file = export_nnssl(resenc_export, tmp_path / "nnssl")
    assert checkpoint.name == "checkpoint_final.pth" and plan_file.name == "adaptation_plan.json"
    ckp = torch.load(checkpoint, weights_only=True)                     # plain types only
    plan = ckp["nnssl_adaptation_plan"]
    assert ADAPTATION_FIELDS <= set(plan) and set(plan["pretrain_plan"]) == PLAN_FIELDS
    (config,) = plan["pretrain_plan"]["configurations"].values()
    assert set(config) == CONFIG_FIELDS
    assert config["spacing"] == [1.5, 1.0, 1.0] and config["patch_size"] == [64, 32, 32]
    assert config["normalization_schemes"] == ["CTNormalization"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "ResidualEncoderUNet" and set(arch["arch_kwargs"]) == set(SMALL_ARCH_KWARGS)
    assert arch["arch_kwargs_requiring_import"] == ["conv_op", "norm_op", "nonlin"]
    assert json.loads(plan_file.read_text(encoding="utf-8")) == {**plan, "trainer_name": "mim_pretrain"}
    # the network nnssl's arch_kwargs build (dynamic_network_architectures, not our builder), loaded as master does
    network = build_network(arch["arch_kwargs"], plan["pretrain_num_input_channels"])
    nnunet_master_load(network, checkpoint)
    state, _ = load_export(resenc_export)
    loaded = network.encoder.state_dict()
    assert all(raw_sha1(loaded[k]) == raw_sha1(v) for k, v in state.items())
    assert all(k.startswith(("encoder.stem.", "encoder.stages.")) for k in ckp["network_weights"])


def test_our_reader_of_the_schema_gives_back_the_export(resenc_export, tmp_path):
    checkpoint, _ = export_nnssl(resenc_export, tmp_path / "nnssl")
    read = NnsslCheckpoint(checkpoint)
    architecture, size = read.architecture()
    _, record = load_export(resenc_export)
    assert architecture == record["architecture"] and size == "tiny"
    assert read.configuration()["patch_size"] == record["input_size"]


def test_round_trip_export_nnssl_import_gives_identical_tensors_and_the_runs_card(resenc_export, tmp_path):
    checkpoint, _ = export_nnssl(resenc_export, tmp_path / "nnssl")
    report = import_nnssl(checkpoint, tmp_path / "back.safetensors")
    before, record = load_export(resenc_export)
    after, again = load_export(tmp_path / "back.safetensors")
    assert {k: raw_sha1(v) for k, v in after.items()} == {k: raw_sha1(v) for k, v in before.items()}
    assert report["dropped"] == [] and report["tensors"] == len(before)
    for key in ("architecture", "spacing", "normalisation", "manifest_hash", "steps", *RUN_FIELDS):
        assert again[key] == record[key], key
    assert "nnssl checkpoint checkpoint_final.pth" in again["source"]
    card = card_path(tmp_path / "back.safetensors").read_text(encoding="utf-8")
    section = lambda text: text.split("## Training")[1].split("## How to fine-tune")[0]
    assert section(card) == section(card_path(resenc_export).read_text(encoding="utf-8"))


def test_import_of_a_checkpoint_written_from_nnssls_documented_schema(tmp_path):
    network = write_nnssl_checkpoint(tmp_path / "mae.pth")
    report = import_nnssl(tmp_path / "mae.pth", tmp_path / "mae.safetensors")
    state, record = load_export(tmp_path / "mae.safetensors")
    assert record["backbone"] == "resenc" and record["size"] == "nnssl" and record["input_size"] == [64, 64, 64]
    assert record["nnssl"]["normalization_schemes"] == ["ZScoreNormalization"] and record["normalisation"] is None
    assert record["architecture"]["arch_kwargs"]["features_per_stage"] == SMALL_ARCH_KWARGS["features_per_stage"]
    # the decoder and segmentation head are dropped; every encoder tensor is kept, once
    assert report["dropped"] and all(k.startswith("decoder.") for k in report["dropped"])
    ours = build_resenc_unet(record["architecture"], 1, 3)
    load_encoder_state(ours, state)                                      # strict
    original = network.encoder.state_dict()
    fine = ours.encoder.state_dict()
    assert all(raw_sha1(fine[k]) == raw_sha1(original[k]) for k in original)
    card = card_path(tmp_path / "mae.safetensors").read_text(encoding="utf-8")
    assert "- Steps: not recorded" in card and "ZScoreNormalization" in card and "MAE" in card


def test_the_resencl_preset_is_nnssls_resenc_l(tmp_path):
    torch.save({"network_weights": {}, "nnssl_adaptation_plan": adaptation_plan("ResEncL", None)}, tmp_path / "l.pth")
    architecture, size = NnsslCheckpoint(tmp_path / "l.pth").architecture()
    kwargs = architecture["arch_kwargs"]          # nnssl's get_res_enc_l, written out
    assert size == "L" and kwargs["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert kwargs["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and kwargs["kernel_sizes"] == [[3, 3, 3]] * 6
    assert kwargs["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5 and kwargs["n_conv_per_stage_decoder"] == [1] * 5


class Pickled:
    pass


@pytest.mark.parametrize("case, message", [
    ("primus", "architecture 'PrimusM'"),
    ("missing", r"19 encoder key\(s\) missing"),
    ("nan", "non-finite"),
    ("pickled", "never pickled code"),
    ("batchnorm", "norm_op"),
    ("not_nnssl", "not an nnssl checkpoint \\(no 'network_weights'"),
])
def test_import_refusals_are_one_line(tmp_path, case, message):
    path = tmp_path / f"{case}.pth"
    if case == "primus":
        torch.save({"network_weights": {}, "nnssl_adaptation_plan": adaptation_plan("PrimusM", None)}, path)
    elif case == "missing":
        write_nnssl_checkpoint(path, edit=lambda w: [w.pop(k) for k in list(w) if k.startswith("encoder.stages.2.")])
    elif case == "nan":
        write_nnssl_checkpoint(path, edit=lambda w: w["encoder.stages.1.blocks.0.conv1.conv.weight"].view(-1)
                               .__setitem__(0, float("nan")))
    elif case == "pickled":
        torch.save({"network_weights": {}, "nnssl_adaptation_plan": {}, "init_args": Pickled()}, path)
    elif case == "batchnorm":
        kwargs = {**SMALL_ARCH_KWARGS, "norm_op": "torch.nn.modules.batchnorm.BatchNorm3d"}
        torch.save({"network_weights": {}, "nnssl_adaptation_plan": adaptation_plan(arch_kwargs=kwargs)}, path)
    else:
        torch.save({"state_dict": {}}, path)
    with pytest.raises(ExportError, match=message) as error:
        import_nnssl(path, tmp_path / "out.safetensors")
    assert len(str(error.value).splitlines()) == 1 and str(path) in str(error.value)
    assert not list(tmp_path.glob("out*"))


def test_import_nnssl_command_refuses_in_one_line(tmp_path):
    path = tmp_path / "primus.pth"
    torch.save({"network_weights": {}, "nnssl_adaptation_plan": adaptation_plan("PrimusM", None)}, path)
    result = subprocess.run([command("mim_nnunet"), "import-nnssl", str(path), "-o", str(tmp_path / "o.safetensors")],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr
    assert "Primus and other networks have no MiM trainer" in result.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_export_nnssl_refuses_hybrid_exports_in_one_line(tmp_path):
    export = hybrid_export(tmp_path)
    result = subprocess.run([command("mim_nnunet"), "export-nnssl", str(export), "-o", str(tmp_path / "n")],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "a hybrid export" in result.stderr and "only resenc" in result.stderr
    assert not (tmp_path / "n").exists()
