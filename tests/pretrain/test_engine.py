"""The pre-training engine: exact resume, distribution on gloo, accumulation, crash propagation,
SIGKILL safety, checkpoints and exports. Tiny models at S = 32 on a 3-scan collection, fp32 on CPU."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from helpers.commands import command, run_main
from helpers.volumes import ct_array, write
from mim_nnunet.backbones import backbone_sizes
from mim_nnunet.common.errors import MimError
from mim_nnunet.common.layout import CHECKPOINT
from mim_nnunet.data.loader import IndexedCropBatches
from mim_nnunet.data.pipeline import prepare
from mim_nnunet.pretrain.checkpoint import (
    CheckpointError,
    export_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mim_nnunet.pretrain.engine import digest, launch
from mim_nnunet.pretrain.logbook import read_records
from mim_nnunet.pretrain.settings import continued_settings, resolve_settings
from mim_nnunet.weights.export import load_export

# progress.png and reconstructions at the last step only (a second of plotting each; the resume test asks for more);
# a checkpoint (44 MB at tiny, with AdamW's moments) where a run stops, not after every step
TINY = dict(input_size=[32], per_device_batch=1, accumulation=1, steps=6, loader_workers=0, save_every=100,
            val_crops=2, plot_every=100, recon_every=100)


@pytest.fixture(scope="module")
def collection(module_tmp):
    """Three CT-like scans prepared once; nnU-Net folders exported for this module's tests."""
    root = module_tmp("pretrain")
    scans = root / "scans"
    for i in range(3):
        write(ct_array((40, 48, 44), seed=i), scans / f"s{i}.nii.gz")
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "pre", "nnUNet_results": root / "res"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            v.mkdir()
            mp.setenv(k, str(v))
        prepared = prepare([str(scans)], name="tiny", size="tiny", num_processes=1, log=lambda *_: None)
        yield {"root": root, "scans": scans, "prepared": prepared,
               "env": {**os.environ, **{k: str(v) for k, v in env.items()}}}


def run(collection, out, world=1, backbone="hybrid", sizes=None, **overrides):
    """A run of the 'tiny' ``backbone`` (``sizes`` replaces entries of its size table) with TINY's settings."""
    plan = dict(collection["prepared"].plan, backbone=backbone,
                backbone_sizes={**backbone_sizes(backbone, "tiny"), **(sizes or {})})
    settings = resolve_settings(plan, collection["prepared"].store, out, world, "cpu", **{**TINY, **overrides})
    launch(settings, resume=False)
    return settings


def resume(out, collection, world=1, **operational):
    saved = load_checkpoint(Path(out) / CHECKPOINT)["settings"]
    settings = continued_settings(saved, world, "cpu", out, collection["prepared"].store, **operational)
    launch(settings, resume=True)
    return settings


def losses(out):
    """Training records' losses and lr (validation records, ``kind == "validation"``, are compared apart)."""
    return [{k: v for k, v in r.items() if k == "step" or k == "loss" or k.startswith(("rec_", "align_", "lr"))}
            for r in read_records(Path(out) / "log.jsonl") if r.get("kind") != "validation"]


def train_records(path):
    """The step records of a log (validation records apart)."""
    return [r for r in read_records(Path(path)) if r.get("kind") != "validation"]


def validations(out):
    return [r for r in read_records(Path(out) / "log.jsonl") if r.get("kind") == "validation"]


def weights(out):
    return load_checkpoint(Path(out) / CHECKPOINT)["model"]


def test_resume_after_a_stop_gives_identical_weights_and_losses(collection, tmp_path):
    run(collection, tmp_path / "straight", plot_every=3, recon_every=3)
    run(collection, tmp_path / "stopped", stop_at=3)
    assert load_checkpoint(tmp_path / "stopped" / CHECKPOINT)["step"] == 3
    assert not (tmp_path / "stopped" / "export").exists()               # not finished: no export yet
    resume(tmp_path / "stopped", collection)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "straight") == losses(tmp_path / "stopped")
    assert [r["step"] for r in losses(tmp_path / "stopped")] == [1, 2, 3, 4, 5, 6]
    assert validations(tmp_path / "straight") == validations(tmp_path / "stopped")      # steps 0 and 6
    # and the weights moved: resume is not trivially equal
    first = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    assert first["step"] == 6 and first["optimizer"]["state"]
    # artefacts of the run
    out = tmp_path / "straight"
    records = train_records(out / "log.jsonl")
    assert all(k in records[-1] for k in ("loss", "rec_l1", "rec_l2", "rec_l3", "align_12", "align_23", "lr",
                                         "grad_norm", "subvolumes_per_s", "data_wait_fraction"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records) and "eta_s" in records[-1]
    assert records[-1]["subvolumes_per_s"] > 0 and 0 <= records[-1]["data_wait_fraction"] <= 1
    assert (out / "progress.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert "step 6/6 loss" in (out / "log.txt").read_text(encoding="utf-8")


def test_accumulation_and_processes_are_interchangeable(collection, tmp_path):
    """1 process x accumulation 2 and 2 gloo processes x accumulation 1 see the same crops and masks,
    so one step gives bit-identical weights; the 2 ranks take different crops and agree on weights.
    One CPU thread per process in both runs: float sums are only reproducible at a fixed thread count."""
    run(collection, tmp_path / "accum", world=1, accumulation=2, steps=2, stop_at=1, cpu_threads=1)
    run(collection, tmp_path / "ranks", world=2, accumulation=1, steps=2, stop_at=1, cpu_threads=1)
    a, b = weights(tmp_path / "accum"), weights(tmp_path / "ranks")
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = read_records(tmp_path / "ranks" / "log.jsonl")[-1]
    assert len(set(record["rank_weights_sha1"])) == 1 and len(record["rank_weights_sha1"]) == 2
    crops = record["rank_crops_sha1"]
    assert crops[0] != crops[1]
    # the digests are those of the loader's batches: rank r's first batch is global batch r
    store = collection["prepared"].store
    uniform = collection["prepared"].plan["uniform_crop_fraction"]
    expected = [digest([IndexedCropBatches(store, (64, 64, 64), 1, rank=r, world_size=2,
                                           uniform_fraction=uniform).batch(0)]) for r in (0, 1)]
    assert crops == expected
    ckpt = load_checkpoint(tmp_path / "ranks" / CHECKPOINT)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def test_chunked_steps_train_as_one_shot_steps_and_resume_exactly(collection, tmp_path):
    """-chunk: the same losses and weights as one-shot steps up to fp32 summation order (the fp64 equality
    of the gradients is tests/mim/test_chunked_step.py's), and bit-exact resume with chunks too; with
    --checkpointing as well the chunked run's weights (tests/mim/test_step_levers.py: fp64 gradients)."""
    quick = dict(steps=2, val_crops=0)                                      # no validation
    run(collection, tmp_path / "one_shot", **quick)
    run(collection, tmp_path / "chunked", chunk=5, **quick)
    run(collection, tmp_path / "levers", chunk=5, checkpointing=True, **quick)      # --checkpointing as well
    run(collection, tmp_path / "stopped", chunk=5, stop_at=1, **quick)
    resume(tmp_path / "stopped", collection)
    assert load_checkpoint(tmp_path / "chunked" / CHECKPOINT)["settings"]["chunk"] == 5
    one, chunked = losses(tmp_path / "one_shot"), losses(tmp_path / "chunked")
    assert [r.keys() for r in one] == [r.keys() for r in chunked]
    for a, b in zip(one, chunked):
        assert all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6) for k in a), (a, b)
    a, b, c = weights(tmp_path / "one_shot"), weights(tmp_path / "chunked"), weights(tmp_path / "stopped")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert all(torch.equal(b[k], c[k]) for k in b) and losses(tmp_path / "stopped") == chunked
    assert load_checkpoint(tmp_path / "levers" / CHECKPOINT)["settings"]["checkpointing"] is True
    levers = weights(tmp_path / "levers")
    assert all(torch.allclose(b[k], levers[k], rtol=1e-5, atol=1e-7) for k in b)
    with pytest.raises(MimError, match="-chunk needs -detach_parent true"):
        run(collection, tmp_path / "refused", chunk=5, switches={"detach_parent": False})


def test_a_half_written_checkpoint_never_replaces_a_good_one(tmp_path, monkeypatch):
    model, path = torch.nn.Linear(3, 2), tmp_path / CHECKPOINT
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_checkpoint(path, model=model, optimizer=opt, scaler=scaler, step=4, settings={"a": 1}, rng=[])

    def dies_half_way(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=opt, scaler=scaler, step=5, settings={"a": 1}, rng=[])
    assert load_checkpoint(path)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, CHECKPOINT + ".sha256.json"]
    path.write_bytes(path.read_bytes()[:200])                               # a truncated file
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT}: content checksum differs"):
        load_checkpoint(path)
    (tmp_path / (CHECKPOINT + ".sha256.json")).unlink()                     # as written before checksums
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT}: corrupt or not a mim-nnunet checkpoint"):
        load_checkpoint(path)


def test_sigkill_mid_run_leaves_a_loadable_checkpoint_and_resumes(collection, tmp_path, monkeypatch, capsys):
    from mim_nnunet.cli.pretrain import main
    env = collection["env"]
    args = [command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny", "-np", "1",
            "-input_size", "32", "-batch", "1", "-accum", "1", "-workers", "0", "-save_every", "1", "-steps", "400",
            "-run", "killed"]
    out = Path(env["nnUNet_results"]) / "MiM_tiny" / "hybrid_tiny_killed"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(train_records(out / "log.jsonl")) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(out / CHECKPOINT)                                   # loads: never half-written
    assert 3 <= state["step"] < 400
    result = subprocess.run(args + ["--c", "-stop_at", str(state["step"] + 2)], env=env, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed at step {state['step']} of 400" in result.stdout
    assert [r["step"] for r in train_records(out / "log.jsonl")] == list(range(1, state["step"] + 3))
    assert not list(out.rglob(".tmp_*"))
    # without --c the folder is not overwritten (the refusal from the command's main, in this process)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, env[name])
    again = run_main(main, args[1:], capsys)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--c" in again.stderr


def test_continuing_with_other_steps_is_refused_with_the_reason(collection, monkeypatch, capsys):
    """--c -steps N: the schedule is laid over the run's own steps, so another N is refused, never ignored. The
    runs are the command in a subprocess; its refusals come from the same ``main`` in this process."""
    from mim_nnunet.cli.pretrain import main
    env = collection["env"]
    args = ["-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny", "-np", "1",
            "-device", "cpu", "-input_size", "32", "-batch", "1", "-accum", "1", "-workers", "0", "-val_crops", "0",
            "-run", "steps"]
    cli = lambda *extra: subprocess.run([command("mim_pretrain")] + args + list(extra), env=env,  # noqa: E731
                                        capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, env[name])
    refused = lambda *extra: run_main(main, args + list(extra), capsys)                           # noqa: E731
    out = Path(env["nnUNet_results"]) / "MiM_tiny" / "hybrid_tiny_steps"
    stopped = cli("-steps", "3", "-stop_at", "1")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    longer = refused("--c", "-steps", "5")                               # unfinished: not silently 3
    assert longer.returncode == 2 and "Traceback" not in longer.stderr, longer.stderr[-2000:]
    assert "the run is at step 1 of its 3" in longer.stderr and "-steps 5 -run NAME" in longer.stderr
    assert load_checkpoint(out / CHECKPOINT)["step"] == 1                 # nothing trained
    shorter = refused("--c", "-steps", "2")
    assert shorter.returncode == 2 and "use -stop_at 2" in shorter.stderr
    finished = cli("--c", "-steps", "3")                                  # its own steps: continues
    assert finished.returncode == 0 and "resumed at step 1 of 3" in finished.stdout, finished.stderr[-2000:]
    extended = refused("--c", "-steps", "6")                              # finished: not silently re-exported
    assert extended.returncode == 2 and "Traceback" not in extended.stderr, extended.stderr[-2000:]
    last = extended.stderr.strip().splitlines()[-1]                     # one line after the progress bars
    assert last.startswith("mim_pretrain: error: ") and "finished its 3 steps" in last and "-steps 6 -run NAME" in last
    assert load_checkpoint(out / CHECKPOINT)["step"] == 3
    assert json.loads((out / "export" / "mim_hybrid_tiny.json").read_text(encoding="utf-8"))["steps"] == 3


def test_cli_two_gloo_processes_finish_and_export(collection):
    env = collection["env"]
    result = subprocess.run([command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny",
                             "-np", "1", "-num_gpus", "2", "-device", "cpu", "-input_size", "32", "-batch", "1",
                             "-accum", "1", "-workers", "1", "-steps", "3", "-run", "gloo", "-r2", "0.5",
                             "-align_loss", "byol", "-align_pairs", "true", "false"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(env["nnUNet_results"]) / "MiM_tiny" / "hybrid_tiny_gloo"
    assert "on 2 cpu process(es)" in result.stdout and "encoder exported to" in result.stdout
    settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    assert settings["world_size"] == 2 and settings["mim"]["r2"] == 0.5 and settings["mim"]["align_pairs"] == [
        True, False] and settings["mim"]["align_loss"] == "byol"
    records = train_records(out / "log.jsonl")
    assert "align_23" not in records[-1] and "align_12" in records[-1]
    state, record = load_export(out / "export" / "mim_hybrid_tiny.safetensors")
    encoder = {k[len("encoder."):]: v for k, v in weights(out).items() if k.startswith("encoder.")}
    assert state.keys() == encoder.keys() and all(torch.equal(state[k], encoder[k]) for k in state)
    assert record["steps"] == 3 and record["spacing"] == collection["prepared"].plan["target_spacing"]
    assert record["normalisation"] == collection["prepared"].plan["intensity"] and record["input_size"] == [32] * 3


def test_a_crashing_rank_ends_the_job_quickly(collection):
    env = {**collection["env"], "MIM_PRETRAIN_FAIL_AT": "1:1"}
    started = time.time()
    result = subprocess.run([command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny",
                             "-np", "1", "-num_gpus", "2", "-device", "cpu", "-input_size", "32", "-batch", "1",
                             "-workers", "0", "-steps", "50", "-run", "crash"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2
    assert "mim_pretrain: error: rank 1 failed:" in result.stderr and "injected failure on rank 1 at step 1" in \
        result.stderr
    assert time.time() - started < 240


@pytest.mark.parametrize("processes", [1, 3])
def test_torchrun_joins_the_given_group(collection, processes):
    """torchrun with one process (the commonest single-GPU launch: a group of one, whose collectives must
    still work) and with three (a count the plan lists no batch split for)."""
    env = collection["env"]
    result = subprocess.run([command("torchrun"), "--standalone", "--nproc_per_node", str(processes),
                             command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny",
                             "-np", "1", "-device", "cpu", "-input_size", "32", "-batch", "1", "-accum", "1",
                             "-workers", "0", "-steps", "2", "-val_crops", "1", "-run", f"torchrun{processes}"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(env["nnUNet_results"]) / "MiM_tiny" / f"hybrid_tiny_torchrun{processes}"
    assert json.loads((out / "settings.json").read_text(encoding="utf-8"))["world_size"] == processes
    record = train_records(out / "log.jsonl")[-1]
    assert record["step"] == 2 and len(record["rank_weights_sha1"]) == processes
    assert len(set(record["rank_crops_sha1"])) == processes                       # each rank its own crops
    assert (out / "export" / "mim_hybrid_tiny.safetensors").is_file()


def test_export_command_for_both_backbones(collection, tmp_path):
    from monai.networks.nets import SwinUNETR

    # 4^3-token windows: swin's wiring at a tenth of the CPU time of the preset's 7^3 (tests/mim/test_model.py)
    run(collection, tmp_path / "swin", backbone="swin", sizes={"window_size": 4}, steps=2, val_crops=1)
    out, meta = export_checkpoint(tmp_path / "swin" / CHECKPOINT)
    assert out.name == "mim_swin_tiny_step2.safetensors"
    state, record = load_export(out)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    net.swinViT.load_state_dict(state, strict=True)                       # loads strictly into SwinViT
    assert record["backbone"] == "swin" and record["steps"] == 2

    run(collection, tmp_path / "hybrid", steps=2)
    result = subprocess.run([command("mim_nnunet"), "export", str(tmp_path / "hybrid" / CHECKPOINT), "-o",
                             str(tmp_path / "h.safetensors")], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    state, record = load_export(tmp_path / "h.safetensors")
    assert "pos_embed" in state and "patch_embed1.proj.weight" in state and record["backbone"] == "hybrid"
    # its card: the validation losses from the run's log up to the checkpoint's step; devices' names were
    # not recorded in the checkpoint
    card = (tmp_path / "h.card.md").read_text(encoding="utf-8")
    assert f"card: {tmp_path / 'h.card.md'}" in result.stdout
    assert "| start (step 0) | end (step 2) |" in card and "- Steps: 2\n" in card
    assert "- Devices: 1 x cpu\n" in card and "not recorded" not in card.split("## Validation")[1].split("##")[0]

    # a checkpoint whose weights do not fit the backbone its settings name
    ckpt = load_checkpoint(tmp_path / "hybrid" / CHECKPOINT)
    ckpt["settings"]["backbone"] = "swin"
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"wrong.pt: cannot be verified: .*add --accept_unverified"):
        export_checkpoint(tmp_path / "wrong.pt")                        # rewritten by hand: no record inside
    with pytest.raises(CheckpointError, match="wrong.pt: encoder weights do not"):
        export_checkpoint(tmp_path / "wrong.pt", accept_unverified=True)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run([command("mim_nnunet"), "export", str(tmp_path / "bad.pt")], capture_output=True,
                            encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and "bad.pt: corrupt or not a mim-nnunet checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_gradient_clipping_changes_the_step_not_the_logged_norm(collection, tmp_path):
    run(collection, tmp_path / "free", steps=2)
    run(collection, tmp_path / "clipped", steps=2, clip_grad=1e-9)
    free, clipped = train_records(tmp_path / "free" / "log.jsonl"), train_records(tmp_path / "clipped" / "log.jsonl")
    assert free[0]["loss"] == clipped[0]["loss"] and free[0]["grad_norm"] == clipped[0]["grad_norm"] > 1e-9
    a, b = weights(tmp_path / "free"), weights(tmp_path / "clipped")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_settings_follow_the_plan_and_reject_what_cannot_work(collection, tmp_path):
    plan = collection["prepared"].plan
    s = resolve_settings(plan, "store", tmp_path, 2, "cpu", input_size=[32])
    entry = plan["batch_by_device_count"]["2"]
    assert (s.per_device_batch, s.accumulation) == (entry["per_device_batch"], entry["accumulation"])
    assert s.effective_batch_crops == plan["effective_batch_subvolumes"] // 21 == 16
    assert s.lr == pytest.approx(1e-4 * (16 * 21 / 256) ** 0.5)
    s = resolve_settings(plan, "store", tmp_path, 1, "cpu", input_size=[32], per_device_batch=2, accumulation=3,
                         switches={"levels": 2})
    assert s.lr == pytest.approx(1e-4 * (6 * (1 + 4) / 256) ** 0.5)           # levels 2: 5 sub-volumes per crop
    # 3 devices, which the plan does not list: its rule gives ceil(16 / 3) = 6 crops per device (18 per step)
    # and the lr follows the larger batch
    three = resolve_settings(plan, "store", tmp_path, 3, "cpu", input_size=[32])
    assert three.effective_batch_crops == 18 and three.per_device_batch * three.accumulation == 6
    assert three.lr == pytest.approx(plan["lr"] * (18 / 16) ** 0.5)
    assert three.provenance["batch_split"] == "plan (derived by its rule for 3 devices)"
    with pytest.raises(MimError, match="gamma3=9"):
        resolve_settings(plan, "store", tmp_path, 1, "cpu", input_size=[32], switches={"gamma3": 9})
    with pytest.raises(MimError, match="needs a GPU"):
        resolve_settings(plan, "store", tmp_path, 1, "cpu", precision="bf16")
    saved = resolve_settings(plan, "store", tmp_path, 2, "cpu", input_size=[32], per_device_batch=1,
                             accumulation=2).to_dict()
    moved = continued_settings(saved, 4, "cpu", tmp_path, "store", log=lambda *_: None)
    assert (moved.world_size, moved.accumulation) == (4, 1)
    with pytest.raises(MimError, match="cannot keep that effective batch"):
        continued_settings(saved, 3, "cpu", tmp_path, "store")


def test_help_documents_every_flag():
    result = subprocess.run([command("mim_pretrain"), "--help"], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=120)
    for flag in ("-num_gpus", "-gpus", "-backbone", "-size", "-steps", "-device", "--c",
                 "-gpu_memory_target", "-np", "-stop_at",
                 "-precision", "-clip_grad", "--compile", "--checkpointing", "--deterministic", "-chunk", "-levels", "-next_level_from",
                 "-align_loss",
                 "-level_weight_schedule", "-loss_weights", "-data_name NAME", "--allow_partial"):
        assert flag in result.stdout, flag
    for old in ("--allow-partial", "--name", "-o NAME"):    # deprecated spellings parse but are not advertised
        assert old not in result.stdout, old


def test_validation_loss_is_logged_plotted_and_exported(collection, tmp_path):
    from mim_nnunet.pretrain.engine import build
    from mim_nnunet.pretrain.validation import ValidationSet

    settings = run(collection, tmp_path / "val", steps=4, val_every=2, val_crops=2)
    val = [r for r in read_records(tmp_path / "val" / "log.jsonl") if r.get("kind") == "validation"]
    assert [r["step"] for r in val] == [0, 2, 4]
    assert all({k for k in r if k.startswith("val_")} == {"val_rec_l1", "val_rec_l2", "val_rec_l3"} for r in val)
    assert val[0]["held_out_cases"] == 0 and settings.val_cases == []          # 3 cases: fixed crops instead
    # step 0 is the freshly built model (same seed) on the same fixed crops and masks
    fresh = build(settings, torch.device("cpu"))
    again = ValidationSet(settings).evaluate(fresh.model, torch.device("cpu"))
    assert again == pytest.approx({k: v for k, v in val[0].items() if k.startswith("val_")}, rel=1e-6)
    _, record = load_export(tmp_path / "val" / "export" / "mim_hybrid_tiny.safetensors")
    assert record["validation"]["first"] == {"step": 0, **{k[4:]: v for k, v in val[0].items() if k.startswith("val_")}}
    assert record["validation"]["last"]["step"] == 4 and record["validation"]["crops"] == 2
    assert (tmp_path / "val" / "progress.png").is_file()
    # the model card beside the export reports the run's own record
    card = (tmp_path / "val" / "export" / "mim_hybrid_tiny.card.md").read_text(encoding="utf-8")
    for level in (1, 2, 3):
        assert f"| L{level} | {val[0][f'val_rec_l{level}']:.4f} | {val[-1][f'val_rec_l{level}']:.4f} |" in card
    steps = [r for r in read_records(tmp_path / "val" / "log.jsonl") if r.get("kind") != "validation"]
    wall = sum(r["seconds"] for r in steps)
    mim = settings.mim
    per_crop = 1 + mim["gamma2"] + mim["gamma2"] * mim["gamma3"]          # L1, its L2 and their L3 sub-volumes
    assert f"- Wall time: {wall:.0f} s" in card and "- Steps: 4\n" in card and "- Precision: fp32" in card
    assert f"- Effective batch: {per_crop} sub-volumes per optimiser step (1 crop(s) x {per_crop}" in card
    assert "- Devices: 1 x cpu (" in card and f"- Learning rate: {settings.lr:.6g} (peak; from the plan" in card
    assert "| tiny | CT | 3 |" not in card and "- Collection: tiny" in card       # cases by source: the scans folder
    # the source (the -d folder's name) and the modality that normalised the cases ("auto" detected CT)
    assert "| scans | CT | 3 |" in card and "- Leakage checks: none was run" in card
    assert f"- Target spacing: {' x '.join(f'{v:g}' for v in settings.spacing)} mm (z, y, x)" in card
    assert "- Orientation: RAS; array axis order: z, y, x" in card
    assert "not recorded" not in card.split("## Model", 1)[1]          # every field recorded (the header explains it)


def test_validation_runs_under_the_trainings_autocast(collection, tmp_path):
    """The validation loss and the pictures run the model as training does (bf16 autocast here, on the CPU,
    standing for a GPU run's): the same numbers' precision and no extra compiled graphs."""
    from mim_nnunet.pretrain.engine import build, validate
    from mim_nnunet.pretrain.validation import ValidationSet, picture_levels

    plan = dict(collection["prepared"].plan)
    settings = resolve_settings(plan, collection["prepared"].store, tmp_path, 1, "cpu",
                                **{**TINY, "val_crops": 1})
    settings.precision = "bf16"
    trainee = build(settings, torch.device("cpu"))
    seen = []
    trainee.model.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    logged = []
    validation = ValidationSet(settings)
    validate(trainee, validation, 0, torch.device("cpu"), type("Log", (), {"validation": lambda self, r: logged.append(r)})())
    assert seen and all(s == (True, torch.bfloat16) for s in seen) and "val_rec_l1" in logged[0]
    seen.clear()
    picture_levels(validation, trainee.model, torch.device("cpu"), dict(device_type="cpu", dtype=torch.bfloat16))
    assert seen and all(s == (True, torch.bfloat16) for s in seen)


def test_a_run_continues_on_another_number_of_processes(collection, tmp_path):
    """2 gloo ranks to step 1, then one process to the end: accumulation 2 keeps the effective batch, and the
    old ranks' RNG states are left alone (not restored by index)."""
    out = tmp_path / "moved"
    run(collection, out, world=2, accumulation=1, steps=2, stop_at=1, cpu_threads=1, val_crops=0)
    assert len(load_checkpoint(out / CHECKPOINT)["rng"]) == 2
    settings = resume(out, collection, world=1, log=lambda *_: None)
    assert (settings.world_size, settings.accumulation) == (1, 2)
    state = load_checkpoint(out / CHECKPOINT)
    assert state["step"] == 2 and len(state["rng"]) == 1 and state["settings"]["world_size"] == 1


def test_size_is_checked_per_backbone_and_unfit_sizes_are_one_line(collection, tmp_path):
    from mim_nnunet.cli.pretrain import main
    with pytest.raises(SystemExit) as info:
        main(["-d", "x", "-backbone", "hybrid", "-size", "L"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["-d", "x", "-backbone", "resenc", "-size", "base"])
    # resenc's stride-32 stage needs two voxels: S = 32 cannot work, said in one line before any step
    result = subprocess.run([command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "resenc32",
                             "-backbone", "resenc", "-size", "tiny", "-np", "1", "-input_size", "32", "-steps", "2",
                             "-workers", "0"], env=collection["env"], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "mim_pretrain: error: resenc 'tiny': resenc: input_size [32, 32, 32] leaves the deepest stage one voxel, "
        "where instance norm cannot train; make one axis at least 64")


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name.startswith(("checkpoint_latest", "mim_"))}


def test_a_checkpoint_copied_without_its_checksum_and_spoilt_is_refused_by_continue(collection):
    """Only checkpoint_latest.pt copied (no .sha256.json), bytes of an optimiser tensor overwritten:
    ``mim_pretrain --c`` refuses it in one line and nothing is trained or overwritten."""
    env = collection["env"]
    out = Path(env["nnUNet_results"]) / "MiM_tiny" / "hybrid_tiny_copied"
    run(collection, out, stop_at=1, val_crops=0)
    path = out / CHECKPOINT
    (out / (CHECKPOINT + ".sha256.json")).unlink()
    state = load_checkpoint(path)                                     # verified by the record inside it
    moment = next(s["exp_avg_sq"] for s in state["optimizer"]["state"].values() if s["exp_avg_sq"].numel() > 64)
    raw = path.read_bytes()
    data = moment.contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at > 0
    path.write_bytes(raw[:at] + b"\x7f" * 64 + raw[at + 64:])       # 16 moments overwritten with 3.4e38
    before = _files(out)
    result = subprocess.run([command("mim_pretrain"), "-d", str(collection["scans"]), "-data_name", "tiny", "-size", "tiny",
                             "-np", "1", "-device", "cpu", "-workers", "0", "-run", "copied", "--c"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"mim_pretrain: error: {path}: content differs from the digest stored in it (the file changed "
                    f"after it was written: corrupt copy or bit flip); use an intact copy")
    assert _files(out) == before and [r["step"] for r in train_records(out / "log.jsonl")] == [1]


def test_a_nan_in_the_optimizer_stops_the_run_and_keeps_the_last_checkpoint_and_export(collection, tmp_path,
                                                                                       monkeypatch):
    out = tmp_path / "nan"
    run(collection, out, stop_at=1, val_crops=0, save_every=1)             # step 2 is saved: the NaN is found there
    export_checkpoint(out / CHECKPOINT)                                 # an export of step 1 beside it
    before = _files(out)
    assert sorted(before) == [CHECKPOINT, CHECKPOINT + ".sha256.json", "export/mim_hybrid_tiny_step1.card.md",
                              "export/mim_hybrid_tiny_step1.json", "export/mim_hybrid_tiny_step1.safetensors"]
    steps = []

    def spoil(optimizer, args, kwargs):                                 # after the update of step 2
        steps.append(len(steps) + 2)
        param = optimizer.param_groups[0]["params"][0]
        optimizer.state[param]["exp_avg_sq"].view(-1)[0] = float("nan")
    handle = register_optimizer_step_post_hook(spoil)
    try:
        with pytest.raises(CheckpointError, match=r"optimizer exp_avg_sq of \S+ holds 1 non-finite value\(s\) "
                                                  r"\(NaN/inf\) after step 2; the run stops without writing"):
            resume(out, collection)
    finally:
        handle.remove()
    assert steps == [2]
    assert _files(out) == before
    assert load_checkpoint(out / CHECKPOINT)["step"] == 1
