"""The demo's settings: pre-training length and input size, and the fine-tuning trainers' budget
(``nnUNetTrainerMiM_<finetune>`` and its scratch twin) per setting."""

DEMO_SETTINGS = {
    "quick": {"pretrain_steps": 4, "input_size": 32, "finetune": "tiny_1epoch"},        # tests, smoke runs
    "default": {"pretrain_steps": 40, "input_size": 64, "finetune": "tiny_demo"},       # < 20 min on 2 CPU cores
    "long": {"pretrain_steps": 2000, "input_size": 64, "finetune": "tiny_100epochs"},   # better numbers, hours on CPU
}
