"""The demo's settings. ``pretrain``: mim_pretrain's run (steps, S, crops per step, learning rate,
validation); ``finetune``: the budget of the fine-tuning trainers (``nnUNetTrainerMiM_tiny_<budget>`` and
its scratch twin), the seeds each is trained with, and the label settings (``all``: both labelled halves;
``one``: a single labelled case, the label-efficiency setting). Spacing, HU window and patch come
with the demo dataset (``plans/demo/demo_ct.json``). ``DEMO_COSTS``: what each stage costs on a host, from its
probe (:mod:`mim_nnunet.common.host`), for the estimate the demo prints before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

DEMO_SETTINGS = {
    # tests and smoke runs: every step once, numbers meaningless
    "quick": {"pretrain": {"steps": 4, "input_size": 32, "batch": 1, "lr": None, "val_every": 2, "val_crops": 2},
              "finetune": {"budget": "quick", "seeds": [0], "labels": ["all"]}},
    # under 20 minutes on a 2-core AVX2 host (docs/benchmarks.md): 250 pre-training steps, one pair of
    # fine-tunings (MiM and scratch at the same time, one core each) of 120 iterations on both labelled halves
    "default": {"pretrain": {"steps": 250, "input_size": 32, "batch": 1, "lr": 1e-3, "val_every": 50, "val_crops": 4},
                "finetune": {"budget": "demo", "seeds": [0], "labels": ["all"]}},
    # what the demo can show on a CPU: 21 minutes on a 2-core AVX-512 Xeon, about an hour on a 2-core AVX2 host:
    # 1000 pre-training steps, 8 fine-tunings (2 labels x 2 seeds x MiM/scratch), seed spread and verdict
    "full": {"pretrain": {"steps": 1000, "input_size": 32, "batch": 1, "lr": 1e-3, "val_every": 100, "val_crops": 4},
             "finetune": {"budget": "demo", "seeds": [0, 1], "labels": ["all", "one"]}},
    # better numbers, hours on a CPU
    "long": {"pretrain": {"steps": 4000, "input_size": 32, "batch": 2, "lr": None, "val_every": 250, "val_crops": 8},
             "finetune": {"budget": "100epochs", "seeds": [0, 1, 2], "labels": ["all", "one"]}},
}


# ---------------------------------------------------------------------------------------------------------
# What the demo costs on a host: printed before it starts (``mim_nnunet demo``), from a 2-second probe.
# ---------------------------------------------------------------------------------------------------------

# The demo's stated limit: an estimate above it is said before the demo starts.
DEMO_LIMIT_SECONDS = 20 * 60


@dataclass(frozen=True)
class DemoCosts:
    """The demo's stage costs, split into start-up seconds (process start-ups and imports, nnU-Net's planning
    and preprocessing, file I/O: one core's speed, whatever the kernels) and work (convolutions and matmuls:
    the kernels PyTorch picks).

    Seconds are measured on the calibration host, whose probe (fp32 matmul GFLOP/s at the run's threads,
    :func:`mim_nnunet.common.host.probe_host`) with each capability's kernels is ``reference_gflops``. Work is
    in reference GFLOP: seconds on the calibration host x its probe. On another host a stage takes
    ``seconds x reference_gflops[capability] / probe + work x capability_factor[capability] / probe``: the
    probe carries clock, cores and the matmul kernels; ``capability_factor`` what the matmul probe does not
    see of the convolution kernels PyTorch picks for the host's ``torch.backends.cpu.get_cpu_capability()``.

    To calibrate on an idle host: ``mim_nnunet host`` (the probe), then ``mim_nnunet demo -setting quick``
    and ``mim_nnunet demo`` (or ``-setting full``) in fresh workspaces; each report's "Run time" gives the stages'
    seconds. Start-up seconds come from the quick setting (its work is small), work from the default or full
    setting's seconds minus them, times the probe. ``capability_factor`` and ``reference_gflops``: the same with
    ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (the probe then runs on
    AVX2 too).
    """

    calibration: str                       # the host and runs the numbers come from
    provisional: bool = True               # not yet calibrated by the procedure above
    capability_factor: Dict[str, float] = field(default_factory=dict)
    reference_gflops: Dict[str, float] = field(default_factory=dict)   # the calibration host's probe per capability
    data_seconds: float = 0.0              # cutting and writing the demo's CT (mim_nnunet.demo.data)
    pretrain_seconds: float = 0.0          # mim_pretrain's start: fingerprint, plan, preprocessing of the collection
    pretrain_step_gflop: float = 0.0       # one step of one 2S crop at S = 32 (validation included)
    planning_seconds: float = 0.0          # nnU-Net's planning, the plans variant, nnU-Net's preprocessing
    finetune_seconds: float = 0.0          # per group of fine-tunings run together: start-up, checkpoints
    finetune_iteration_gflop: float = 0.0  # one training iteration of one fine-tuning (all of them add up)
    validation_seconds: float = 0.0        # nnU-Net's final validation of one fine-tuning (budgets that do it;
                                           # mostly its pools' process start-ups, so seconds, not work)
    prediction_seconds: float = 0.0        # per group of predictions run together (mostly nnU-Net's start-up)

    def factor(self, capability: str) -> float:
        return self.capability_factor.get(str(capability).upper(), max(self.capability_factor.values(), default=1.0))

    def reference(self, capability: str, gflops: float) -> float:
        """The calibration host's probe with ``capability``'s kernels; for a capability the model does not know,
        its smallest (the slowest kernels'); without any, ``gflops`` itself (start-up seconds stay as measured)."""
        known = self.reference_gflops
        return known.get(str(capability).upper(), min(known.values(), default=gflops))


# Calibrated on one host: a 2-core Intel Xeon, torch 2.14.1, 2026-12-05, each run alone on the machine. AVX-512
# kernels, probe 329.2 GFLOP/s at 2 threads: `bash scripts/demo.sh` (default setting) took 342 s: pre-training 250
# steps 154 s (1 compute thread: cores minus the loader worker), the pair of fine-tunings (2 x 124 iterations, one
# thread each, channels-last, no final validation) 137-141 s, planning and preprocessing 23 s, the pair of
# predictions 19 s. Start-up seconds: the quick setting's stages with AVX2 kernels (`-setting quick`, 75 s: pre-
# training 14, planning and preprocessing 22, fine-tuning 12, prediction 18 s; the probe with these kernels, median
# of 5: 207.4 GFLOP/s). AVX2 factor (PROVISIONAL): fitted to one reported 2-core AVX2 host (probe 51 GFLOP/s),
# which ran the pre-training step 2.6 times and a pair of fine-tunings 2.25 times as long as this host with AVX2
# kernels (docs/benchmarks.md#the-demo); this host's AVX2 kernels lose more than that host's: the default setting
# with them took 392 s, where this model says about 260.
DEMO_COSTS = DemoCosts(
    calibration="a 2-core Intel Xeon, AVX512, probe 329.2 GFLOP/s, 2026-12-05 (AVX2 factor provisional: one "
                "reported 2-core AVX2 host at 51 GFLOP/s)",
    capability_factor={"AVX512": 1.0, "AVX2": 0.45, "DEFAULT": 0.45},
    reference_gflops={"AVX512": 329.2, "AVX2": 207.4, "DEFAULT": 207.4},
    data_seconds=4.0,
    pretrain_seconds=14.0,
    pretrain_step_gflop=184.4,          # (154 - 14) s x 329.2 GFLOP/s / 250 steps
    planning_seconds=22.0,
    finetune_seconds=12.0,
    finetune_iteration_gflop=165.9,     # (137 - 12) s x 329.2 GFLOP/s / (2 x 124 iterations)
    validation_seconds=40.0,            # the "demo" budget's comment (mim_nnunet/finetune/variants.py)
    prediction_seconds=18.0,
)


def estimate_demo(setting: str, gflops: float, capability: str, parallel: int,
                  costs: DemoCosts = DEMO_COSTS) -> List[Tuple[str, float]]:
    """Seconds of each stage of ``mim_nnunet demo -setting SETTING`` on a CPU host whose probe gives
    ``gflops`` (fp32 matmul GFLOP/s at the demo's threads) with ``capability``, ``parallel`` fine-tunings
    run together: ``[(stage, seconds), ...]`` in the demo's order (their sum is the estimate)."""
    from ..finetune.variants import BUDGETS
    if not gflops > 0:
        raise ValueError(f"the probe's GFLOP/s must be positive, got {gflops}")
    conf = DEMO_SETTINGS[setting]
    pre, fine = conf["pretrain"], conf["finetune"]
    scale = costs.factor(capability) / gflops                    # seconds per reference GFLOP here
    slower = costs.reference(capability, gflops) / gflops          # start-up seconds here per calibration second
    budget = BUDGETS[fine["budget"]]
    runs = 2 * len(fine["labels"]) * len(fine["seeds"])         # MiM and scratch per label setting and seed
    groups = len(fine["labels"]) * len(fine["seeds"]) * -(-2 // parallel)   # each seed's pair, `parallel` at once
    # validation iterations are forward passes only: about a third of a training iteration
    iterations = budget.epochs * (budget.iterations + budget.val_iterations / 3)
    step_work = costs.pretrain_step_gflop * pre["batch"] * (pre["input_size"] / 32) ** 3
    return [
        ("data", costs.data_seconds * slower),
        ("pre-training", costs.pretrain_seconds * slower + pre["steps"] * step_work * scale),
        ("planning and preprocessing", costs.planning_seconds * slower),
        ("fine-tuning", (groups * costs.finetune_seconds + runs * budget.final_validation * costs.validation_seconds)
         * slower + runs * iterations * costs.finetune_iteration_gflop * scale),
        ("prediction", groups * costs.prediction_seconds * slower),
    ]


def describe_estimate(setting: str, stages: List[Tuple[str, float]], limit: float = DEMO_LIMIT_SECONDS,
                      costs: DemoCosts = DEMO_COSTS) -> List[str]:
    """The lines the demo prints before it starts: the estimate per stage and, above ``limit``, a warning."""
    total = sum(s for _, s in stages)
    lines = [f"estimate for this host: about {total / 60:.0f} min ("
             + ", ".join(f"{name} {s / 60:.1f}" for name, s in stages) + " min"
             + ("; provisional calibration)" if costs.provisional else ")")]
    if total > limit:
        shorter = {"default": " (`-setting quick` is a smoke run of a few minutes)",
                   "quick": ""}.get(setting, " (`-setting default` is the shorter demo, `-setting quick` a smoke run)")
        lines.append(f"WARNING: the estimate, {total / 60:.0f} min, is over {limit / 60:.0f} minutes on this host"
                     + shorter)
    return lines
