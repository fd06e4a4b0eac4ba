"""Training checkpoints: the complete state of a run, written atomically, read with ``weights_only=True``;
and the encoder of a run or of a checkpoint written as an export.

A checkpoint holds the model, optimiser, loss scaler, the number of steps done, the settings and the
RNG states of every rank. The learning rate is a function of the step and the data stream a function
of (seed, batch index), so these are all a resumed run needs to continue exactly.

Integrity travels inside the file: ``integrity`` holds the sha256 of everything else in it
(:func:`mim_nnunet.common.hashing.state_sha256`), checked on every load, so a copy without its
``.sha256.json`` is still verified. A file with neither record (an older version's file whose
record was not copied) is refused unless the user accepts it knowingly (``--accept_unverified``). No
checkpoint is written with a non-finite weight or optimiser value: the run stops and the last good file stays.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..common.atomic import atomic_write, write_json_atomic
from ..common.errors import MimError, first_line, last_line
from ..common.hashing import file_sha256, state_sha256
from ..common.layout import FINGERPRINT, LEAKAGE_CHECKS, MANIFEST, export_path
from ..common.safe_load import UnsafeFileError, load_tensors_file
from ..common.tensors import first_nonfinite, optimizer_tensors
from ..data.pipeline import with_modalities
from ..data.preprocess import STORE_AXES, STORE_ORIENTATION
from ..weights.export import export_encoder
from .logbook import LOG_JSONL, read_records
from .settings import RunSettings
from .validation import validation_summary

CHECKPOINT_FORMAT = "mim-nnunet-pretrain-checkpoint/1"
ENCODER_PREFIX = "encoder."      # the MiM model holds its encoder under this name
INTEGRITY_KEY = "integrity"      # {"sha256": digest of every other entry}
ACCEPT_UNVERIFIED = "--accept_unverified"


class CheckpointError(MimError):
    """A checkpoint that is missing, corrupt or not ours."""


def capture_rng() -> Dict:
    """This process's RNG states (python, numpy, torch CPU, and the CUDA state of this rank's own GPU
    only: the run may continue with another number of GPUs visible per process) as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else []}


def restore_rng(state: Dict) -> None:
    """Set the states :func:`capture_rng` took; the CUDA state goes to this rank's current GPU (earlier
    checkpoints held one state per visible GPU: the current GPU's index picks it when there is one)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        index = 0 if len(cuda) == 1 else torch.cuda.current_device()
        if index < len(cuda):
            torch.cuda.set_rng_state(cuda[index])


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler, step: int,
                    settings: Dict, rng: List[Dict]) -> Path:
    """Write the run's state after ``step`` optimiser steps; the previous file stays until the new one is
    complete (write to a temporary name, then rename)."""
    refuse_nonfinite(path, model, optimizer, step)
    state = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "settings": settings, "rng": rng}
    state[INTEGRITY_KEY] = {"sha256": state_sha256(state)}
    written = []

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        # the new file's checksum joins the old one's before the rename, so a kill between the two writes
        # leaves a checksum record that still matches whichever file is in place
        written.append(file_sha256(str(tmp)))
        write_json_atomic(checksum_path(path), {"sha256": written + checksums(path)[:1]})
    atomic_write(path, write)
    write_json_atomic(checksum_path(path), {"sha256": written})       # the renamed file: the same bytes
    return path


def refuse_nonfinite(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Stop the run, writing nothing, when a weight or an optimiser value is NaN or infinite."""
    bad = first_nonfinite([*model.state_dict().items(), *optimizer_tensors(optimizer, model)])
    if bad is not None:
        kept = (f"the last good checkpoint {path} is kept as it was; --c from it repeats the same steps"
                if Path(path).is_file() else "there is no earlier checkpoint")
        raise CheckpointError(f"{bad[0]} holds {bad[1]} non-finite value(s) (NaN/inf) after step {step}; the run "
                              f"stops without writing a checkpoint or export ({kept}). Start a new run (-run NAME) "
                              f"with -clip_grad or a lower -lr")


def checksum_path(path: Path) -> Path:
    """The checksum record of a checkpoint: ``<name>.sha256.json`` beside it."""
    return Path(path).with_name(Path(path).name + ".sha256.json")


def checksums(path: Path) -> List[str]:
    record = checksum_path(path)
    try:
        return list(json.loads(record.read_text(encoding="utf-8"))["sha256"]) if record.is_file() else []
    except (ValueError, KeyError, TypeError):
        return []


def load_checkpoint(path: Path, map_location="cpu", accept_unverified: bool = False) -> Dict:
    """A checkpoint written by :func:`save_checkpoint`, its content verified (its own integrity record, or for
    older files the ``.sha256.json`` beside it); one-line errors for anything else. ``accept_unverified``
    loads a file that has neither record (the user's ``--accept_unverified``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    known = checksums(path)
    if checksum_path(path).is_file() and file_sha256(str(path)) not in known:
        raise CheckpointError(f"{path}: content checksum differs from {checksum_path(path).name} (the file changed "
                              f"after it was written: corrupt copy or bit flip)")
    try:
        state = load_tensors_file(path, map_location=map_location,
                                  remedy="A mim_pretrain checkpoint holds only tensors and plain values: this file "
                                         "was not written by mim_pretrain")
    except UnsafeFileError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or not a mim-nnunet checkpoint ({first_line(exc, 200)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a mim-nnunet pre-training checkpoint "
                              f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    record = state.pop(INTEGRITY_KEY, None)
    if record is not None:
        if not isinstance(record, dict) or record.get("sha256") != state_sha256(state):
            raise CheckpointError(f"{path}: content differs from the digest stored in it (the file changed after it "
                                  f"was written: corrupt copy or bit flip); use an intact copy")
    elif not known and not accept_unverified:
        raise CheckpointError(f"{path}: cannot be verified: it carries no integrity record (an older version's "
                              f"file) and {checksum_path(path).name} is not beside it; copy that file next to it, "
                              f"or add {ACCEPT_UNVERIFIED} to use the checkpoint as it is")
    return state


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Delete half-written files a killed run left behind (``.tmp_<pid>_<name>``); returns them."""
    stale = sorted(Path(folder).rglob(".tmp_*")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def data_record(settings: RunSettings) -> Dict:
    """What the run trained on, for the export record and its card: the collection, its sources, cases per
    source and modality (from the manifest beside the store, when it is still the run's data) and the leakage
    checks run on that data. Values that cannot be found stay out (the card says "not recorded")."""
    folder = Path(settings.store).parent
    data: Dict = {"collection": settings.name}
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("hash") == settings.manifest_hash:
        try:                 # the modality that normalised each case (declared, or detected for "auto")
            fingerprint = json.loads((folder / FINGERPRINT).read_text(encoding="utf-8"))
            if fingerprint.get("manifest_hash") == settings.manifest_hash:
                manifest = with_modalities(manifest, fingerprint)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        cases: Dict[str, Dict[str, int]] = {}
        for case in manifest.get("cases", []):
            per = cases.setdefault(str(case.get("source")), {})
            per[str(case.get("modality"))] = per.get(str(case.get("modality")), 0) + 1
        data.update(sources=list(manifest.get("sources") or sorted(cases)), cases=cases,
                    num_cases=int(manifest.get("num_cases", len(manifest.get("cases", [])))))
        try:
            checks = json.loads((folder / LEAKAGE_CHECKS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            checks = []
        data["leakage_checks"] = [c for c in checks if isinstance(c, dict)
                                  and c.get("manifest_hash") == settings.manifest_hash]
    return data


def training_record(settings: RunSettings, records: List[Dict], device_names: Optional[List[str]] = None) -> Dict:
    """How the run trained, for the export record and its card; ``records``: its ``log.jsonl`` records up to
    the exported step (wall time = their optimiser-step seconds summed; None when the log is gone)."""
    config = settings.config
    steps = [r for r in records if r.get("kind") is None and "seconds" in r]
    return {"effective_batch_crops": settings.effective_batch_crops,
            "subvolumes_per_crop": config.subvolumes_per_crop,
            "effective_batch_subvolumes": settings.effective_batch_crops * config.subvolumes_per_crop,
            "lr": settings.lr, "lr_rule": settings.provenance.get("lr"),
            "schedule": f"linear warm-up over {settings.warmup_steps} steps, then cosine to 0 at step {settings.steps}"
                        f"; AdamW betas {list(settings.betas)}, weight decay {settings.weight_decay}",
            "precision": settings.precision, "device": settings.device, "world_size": settings.world_size,
            "device_names": device_names, "seed": settings.seed,
            "wall_time_s": float(sum(r["seconds"] for r in steps)) if steps else None,
            "mim": dict(settings.mim)}


def export_run(encoder: torch.nn.Module, settings: RunSettings, steps: int, path: Path,
               validation: Optional[Dict] = None, records: Optional[List[Dict]] = None,
               device_names: Optional[List[str]] = None) -> Tuple[Path, Path]:
    """Write ``encoder`` with the run's adaptation record (spacing, normalisation, sizes, steps and, when
    known, the validation reconstruction loss at the run's first and last validation), what it trained on
    and how (:func:`data_record`, :func:`training_record`); the export's model card is written with it."""
    config = settings.config
    extra = {"validation": validation} if validation else {}
    return export_encoder(encoder, settings.backbone, settings.size, path, in_channels=config.in_channels,
                          input_size=config.input_size, spacing=settings.spacing, normalisation=settings.intensity,
                          manifest_hash=settings.manifest_hash, steps=steps, data=data_record(settings),
                          preprocessing={"orientation": STORE_ORIENTATION, "array_axes": list(STORE_AXES)},
                          training=training_record(settings, records or [], device_names), **extra)


def export_checkpoint(checkpoint: Path, out: Optional[Path] = None,
                      accept_unverified: bool = False) -> Tuple[Path, Path]:
    """``mim_nnunet export CHECKPOINT``: the encoder of a (possibly unfinished) run. Default output:
    ``<run>/export/mim_<backbone>_<size>_step<k>.safetensors`` next to the checkpoint."""
    from ..backbones import build_encoder

    state = load_checkpoint(Path(checkpoint), accept_unverified=accept_unverified)
    settings = RunSettings.from_dict(state["settings"])
    config = settings.config
    try:
        encoder, _ = build_encoder(settings.backbone, settings.size, config.in_channels, config.input_size,
                                   settings.backbone_sizes)
    except ValueError as exc:    # its settings name a backbone its sizes do not describe
        raise CheckpointError(f"{checkpoint}: encoder weights do not fit the {settings.backbone} '{settings.size}' "
                              f"encoder its settings name ({exc})") from None
    weights = {k[len(ENCODER_PREFIX):]: v for k, v in state["model"].items() if k.startswith(ENCODER_PREFIX)}
    try:
        result = encoder.load_state_dict(weights, strict=False)
    except RuntimeError as exc:   # shapes differ
        raise CheckpointError(f"{checkpoint}: encoder weights do not fit the {settings.backbone} '{settings.size}' "
                              f"encoder ({last_line(str(exc), 200)})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: encoder weights do not match the {settings.backbone} "
                              f"'{settings.size}' encoder ({len(result.missing_keys)} missing, e.g. "
                              f"{result.missing_keys[:2]}; {len(result.unexpected_keys)} unexpected)")
    if out is None:
        out = export_path(Path(checkpoint).parent, settings.backbone, settings.size, step=state["step"])
    # the run's log beside the checkpoint gives the validation losses and step times up to its step
    records = read_records(Path(checkpoint).parent / LOG_JSONL, up_to_step=int(state["step"]))
    return export_run(encoder, settings, state["step"], Path(out), validation=validation_summary(records),
                      records=records)
