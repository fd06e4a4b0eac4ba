"""The installed console scripts, as the tests run them (in subprocesses, like users do)."""

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


def command(name: str) -> str:
    """Absolute path of an installed console script (fails clearly if the install is broken)."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH; run the tests through scripts/test.sh"
    return path


def run(cmd, env, cwd=None, ok=True, timeout=1200) -> subprocess.CompletedProcess:
    """Run ``cmd`` (each part str()-ed) as a user would; with ``ok``, assert it succeeded, showing the tails of
    its output otherwise."""
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=timeout)
    if ok:
        assert result.returncode == 0, \
            f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def run_main(main, argv, capsys) -> subprocess.CompletedProcess:
    """A command of ours through its own ``main(argv)`` in this process, as ``run`` gives a subprocess: the exit
    status (0 when ``main`` returns None) and what it printed. Saves the seconds of importing torch again where a
    test checks a command's messages; each command also runs as a real subprocess somewhere in the suite."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code or 0, out.out, out.err)


def nnunet_env(work: Path, processes: int = 1) -> dict:
    """This environment without nnU-Net's or our variables (but the runner's ``MIM_CPU_THREADS``: one thread per
    test worker, scripts/test.sh), then nnU-Net's three folders under ``work``, our
    trainers folder, ``processes`` augmentation workers and one process for nnU-Net's other pools: what a
    user's shell holds after setup on a small machine. Each pool process is a fresh interpreter importing torch
    and nnU-Net (5-7 CPU-seconds): nnU-Net's default of 8 costs more than the one validation case a test's
    training predicts, and on two cores that CPU time is the suite's. One augmentation worker still runs
    nnU-Net's augmentation in another process (our trainers' objects pickled); each further one prepares
    batches a 2-iteration training never uses. Not 0: nnU-Net 2.8.1's planner then calls
    torch.set_num_threads(0)."""
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "MIM_")) or k == "MIM_CPU_THREADS"}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(Path(work) / name)
    env["nnUNet_extTrainer"] = run([command("mim_nnunet"), "trainers-path"], env, work).stdout.strip()
    env["nnUNet_n_proc_DA"] = str(processes)
    env["nnUNet_def_n_proc"] = "1"
    return env


# nnU-Net's own nnUNetv2_plan_and_preprocess entry point, its fingerprint sampling SAMPLES foreground voxels per
# channel for the intensity statistics instead of its fixed 1e8 (about 10 s per channel here, however small the
# dataset). The sample count is computed in this process and handed to the fingerprint's workers.
_PLAN_WITH_FEWER_SAMPLES = textwrap.dedent("""
    import sys
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry
    init = DatasetFingerprintExtractor.__init__
    def fewer(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = SAMPLES
    DatasetFingerprintExtractor.__init__ = fewer
    sys.argv = ["nnUNetv2_plan_and_preprocess", *sys.argv[1:]]
    plan_and_preprocess_entry()
""")


def plan_with_fewer_samples(args, env, cwd, samples: int = 100_000) -> subprocess.CompletedProcess:
    """``nnUNetv2_plan_and_preprocess ARGS`` with the fingerprint's intensity statistics from ``samples`` voxels
    per channel: for tests whose subject is not planning (the network a plan gives, files a plan needs). The
    tests of planning itself, and every end-to-end run, call the console script."""
    script = _PLAN_WITH_FEWER_SAMPLES.replace("SAMPLES", str(int(samples)))
    return run([sys.executable, "-c", script, *args], env, cwd)


REPO = Path(__file__).resolve().parents[2]          # the checkout the tests belong to
SCRIPTS = REPO / "scripts"


def load_script(name: str):
    """A script of ``scripts/`` (``name`` without ``.py``) imported as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
