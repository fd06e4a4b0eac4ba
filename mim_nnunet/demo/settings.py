"""The demo's settings. ``pretrain``: mim_pretrain's run (steps, S, crops per step, learning rate,
validation); ``finetune``: the budget of the fine-tuning trainers (``nnUNetTrainerMiM_tiny_<budget>`` and
its scratch twin), the seeds each is trained with, and the label settings (``all``: both labelled halves;
``one``: a single labelled case, the label-efficiency setting). Spacing, HU window and patch come
with the demo dataset (``plans/demo/demo_ct.json``)."""

DEMO_SETTINGS = {
    # tests and smoke runs: every step once, numbers meaningless
    "quick": {"pretrain": {"steps": 4, "input_size": 32, "batch": 1, "lr": None, "val_every": 2, "val_crops": 2},
              "finetune": {"budget": "1epoch", "seeds": [0], "labels": ["all"]}},
    # about 13 minutes on 2 CPU cores (docs/benchmarks.md):
    # 1000 pre-training steps, 8 fine-tunings (2 labels x 2 seeds x MiM/scratch) of 120 iterations, MiM and
    # scratch at the same time on one core each
    "default": {"pretrain": {"steps": 1000, "input_size": 32, "batch": 1, "lr": 1e-3, "val_every": 100, "val_crops": 4},
                "finetune": {"budget": "demo", "seeds": [0, 1], "labels": ["all", "one"]}},
    # better numbers, hours on a CPU
    "long": {"pretrain": {"steps": 4000, "input_size": 32, "batch": 2, "lr": None, "val_every": 250, "val_crops": 8},
             "finetune": {"budget": "100epochs", "seeds": [0, 1, 2], "labels": ["all", "one"]}},
}
