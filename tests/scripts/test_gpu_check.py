"""scripts/gpu_check.py and scripts/gpu_kit.py: a summary whatever happens, checks isolated, reruns, the scaler's
skips, TORCH_LOGS counts, and the kit's lists against what the commands really import."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers.commands import SCRIPTS, load_script


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("gpu_check")


def summary(out):
    return json.loads((out / "gpu_check_summary.json").read_text(encoding="utf-8"))


def context(module, tmp_path, **overrides):
    args = module.build_parser().parse_args(["-out", str(tmp_path), "-device", "cpu", "--reduced"])
    args.precision_input_size = 32
    vars(args).update(overrides)
    return module.Context(args, None)


# A log as torch 2.x writes it with TORCH_LOGS=recompiles,graph_breaks (two recompiles, three breaks, one limit)
TORCH_LOG_SAMPLE = """\
V1205 09:00:01.123 1234 torch/_dynamo/guards.py:2797] [0/1] [__recompiles] Recompiling function forward in /x/hybrid.py:120
V1205 09:00:01.123 1234 torch/_dynamo/guards.py:2797] [0/1] [__recompiles]     triggered by the following guard failure(s):
V1205 09:00:01.123 1234 torch/_dynamo/guards.py:2797] [0/1] [__recompiles]     - 0/0: tensor 'x' size mismatch at index 2. expected 4, actual 2
V1205 09:00:02.000 1234 torch/_dynamo/symbolic_convert.py:444] [1/0] [__graph_breaks] Graph break in user code at /x/hybrid.py:141
V1205 09:00:02.000 1234 torch/_dynamo/symbolic_convert.py:444] [1/0] [__graph_breaks] Graph Break Reason: Data-dependent branching
V1205 09:00:02.100 1234 torch/_dynamo/symbolic_convert.py:444] [1/1] [__graph_breaks] Graph break in user code at /x/hybrid.py:150
V1205 09:00:02.200 1234 torch/_dynamo/symbolic_convert.py:444] [2/0] [__graph_breaks] Graph break (user stack suppressed) due to: Tensor.item()
V1205 09:00:03.000 1234 torch/_dynamo/guards.py:2797] [0/2] [__recompiles] Recompiling function forward in /x/hybrid.py:120
W1205 09:00:04.000 1234 torch/_dynamo/convert_frame.py:964] [0/8] torch._dynamo hit config.recompile_limit (8)
step 4 loss 0.91 (no graph breaking here: a line that is not dynamo's)
"""


def test_torch_logs_counts_recompiles_graph_breaks_and_the_limit(gpu_check):
    assert gpu_check.parse_torch_logs(TORCH_LOG_SAMPLE) == {"recompiles": 2, "graph_breaks": 3,
                                                            "recompile_limit_hit": 1}
    assert gpu_check.parse_torch_logs("") == {"recompiles": 0, "graph_breaks": 0, "recompile_limit_hit": 0}


def test_a_setup_failure_still_writes_the_summary(tmp_path):
    """An empty kit folder: the install fails, every check is reported skipped for it, JSON and table written."""
    (tmp_path / "kit" / "A").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "-command", "A", "-kit",
                             str(tmp_path / "kit"), "-out", str(tmp_path / "out"), "-device", "cpu"],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    s = summary(tmp_path / "out")
    assert s["setup"]["status"] == "failed" and "no wheels" in s["setup"]["error"] and s["all_ok"] is False
    assert list(s["checks"]) == list(load_script("gpu_check").COMMANDS["A"])
    assert all(c == {"status": "skipped", "why": "setup failed"} for c in s["checks"].values())
    table = (tmp_path / "out" / "gpu_check_summary.md").read_text(encoding="utf-8")
    assert "| setup | failed |" in table and "| pretrain_resume | skipped |" in table


def test_checks_are_isolated_and_a_skip_is_not_a_failure(gpu_check, tmp_path, monkeypatch):
    ran = []

    def fails(ctx):
        ran.append("fails")
        raise RuntimeError("boom")

    def skips(ctx):
        ran.append("skips")
        raise gpu_check.Skipped("needs CUDA")

    def holds(ctx):
        ran.append("holds")
        return {"value": 3}

    monkeypatch.setattr(gpu_check, "RUNNERS", {"fails": fails, "skips": skips, "holds": holds})
    s = {"checks": {}}
    gpu_check.run_checks(SimpleNamespace(), ["fails", "skips", "holds"], s, tmp_path)
    assert ran == ["fails", "skips", "holds"]
    assert [s["checks"][c]["status"] for c in ran] == ["failed", "skipped", "ok"]
    assert "RuntimeError: boom" in s["checks"]["fails"]["error"] and s["checks"]["holds"]["value"] == 3
    assert s["checks"]["skips"]["why"] == "needs CUDA"
    assert summary(tmp_path)["checks"]["holds"]["status"] == "ok"       # written after each check


def test_the_scalers_skipped_steps_are_counted_as_skips(gpu_check, tmp_path):
    """fp16 through the engine with a scale that overflows fp16 gradients: the scaler skips both steps (and
    halves its scale each time); the losses stay finite and nothing fails."""
    ctx = context(gpu_check, tmp_path)
    result = gpu_check.engine_steps(ctx, "hybrid", "fp16", steps=2, init_scale=2.0 ** 80)
    assert result["skipped_by_scaler"] == 2 and result["fused_adamw"]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in result["steps"])
    normal = gpu_check.engine_steps(ctx, "hybrid", "fp32", steps=1)
    assert normal["skipped_by_scaler"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_a_gpu_every_check_is_reported_skipped(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "-out", str(tmp_path), "-command", "B"],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and "no CUDA device" in result.stdout
    checks = summary(tmp_path)["checks"]
    assert list(checks) == list(load_script("gpu_check").COMMANDS["B"])
    assert all(c == {"status": "skipped", "why": "no CUDA device"} for c in checks.values())


def test_a_rerun_with_the_same_out_runs_the_pretraining_again(gpu_check, tmp_path):
    """The resume check on the CPU (stop at step 2 with no export yet, then --c to step 4 and the export); then
    what lets a second run with the same -out pass: each check starts in its own folder, emptied (a second run
    used to fail every pre-training check: "already holds a run")."""
    cmd = [sys.executable, str(SCRIPTS / "gpu_check.py"), "-out", str(tmp_path), "-device", "cpu", "--reduced",
           "-checks", "pretrain_resume"]
    result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    entry = summary(tmp_path)["checks"]["pretrain_resume"]
    assert entry["status"] == "ok" and (entry["stopped_at"], entry["resumed_to"]) == (2, 4)
    folder = tmp_path / "work" / "pretrain_resume"
    assert list(folder.rglob("checkpoint*"))                              # the run the first check left
    assert context(gpu_check, tmp_path).work("pretrain_resume") == folder and not any(folder.iterdir())


def test_unknown_checks_are_refused(gpu_check, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main(["-out", str(tmp_path), "-checks", "environment,warp_drive"])


KIT_MODULES = {
    "A": ["mim_nnunet.cli.pretrain", "mim_nnunet.pretrain.run", "mim_nnunet.data.pipeline", "mim_nnunet.pretrain.engine",
          "mim_nnunet.pretrain.plots", "mim_nnunet.weights.export", "mim_nnunet.cli.main", "mim_nnunet.mim"],
}


def with_requirements(names, kit):
    """``names`` and, for those the kit follows (not ``kit.NO_FOLLOW``), their installed requirements, recursively
    (what the kit puts in the wheelhouse beside them: matplotlib's packaging, pillow, ...)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in {kit.canonical(n) for n in kit.NO_FOLLOW}:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(kit.canonical(req.name))
    return seen


def test_command_a_imports_nothing_beyond_its_kit_and_the_targets_torch(tmp_path):
    """Command A's modules import with every distribution blocked that is neither in its kit list nor torch's
    own (nor the standard library): what the kit leaves out (imagecodecs, blosc2, nibabel, ...) is not needed."""
    kit = load_script("gpu_kit")
    allowed = with_requirements({kit.canonical(n) for n in kit.COMMANDS["A"]}, kit)
    probe = f"""
import sys, importlib, importlib.abc
from importlib.metadata import packages_distributions
dists = packages_distributions()
allowed = {sorted(allowed)!r}
import re
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
torch_own = {{"torch", "triton", "filelock", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec",
             "typing-extensions", "setuptools"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        owners = {{canon(d) for d in dists.get(top, [])}}
        if owners and not owners & (set(allowed) | torch_own) and not any(o.startswith(("nvidia", "cuda")) for o in owners):
            raise ModuleNotFoundError(f"blocked {{name}} ({{sorted(owners)}})", name=name)
import torch
sys.meta_path.insert(0, Block())
for m in {KIT_MODULES["A"]!r}:
    importlib.import_module(m)
print("imported")
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, encoding="utf-8", errors="replace",
                            timeout=600)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


def test_the_kit_reads_what_the_target_has_and_its_wheels_requirements(tmp_path):
    kit = load_script("gpu_kit")
    freeze = tmp_path / "have.txt"
    freeze.write_text("numpy==2.5.2\nScikit_Image==0.26.0\n# comment\nsafetensors @ file:///x\n", encoding="utf-8")
    assert kit.read_have(str(freeze)) == {"numpy", "scikit-image", "safetensors", "torch"}
    assert kit.read_have("tqdm, PyYAML") == {"tqdm", "pyyaml", "torch"}
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    import zipfile
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\nRequires-Dist: numpy>=1.24\n"
                    "Requires-Dist: importlib-resources; python_version < '3.9'\n"
                    "Requires-Dist: pytest; extra == 'test'\nRequires-Dist: pywin32; sys_platform == 'win32'\n")
    assert kit.requirements_of(wheel, kit.target_environment("3.12")) == ["numpy>=1.24"]
    assert kit.NEVER.match("nvidia-cublas") and kit.NEVER.match("torch") and not kit.NEVER.match("torchio")


def _wheel(path, name, payload_bytes, seed):
    """A minimal installable wheel ``name`` with one compressible module of about ``payload_bytes``."""
    import base64
    import hashlib
    import random
    import zipfile
    rng = random.Random(seed)
    body = ("".join(rng.choice("ab\n") for _ in range(payload_bytes))).encode("utf-8")
    module = f"{name}/__init__.py"
    code = b"DATA = '''" + body + b"'''\n"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode("utf-8")
    wheel_meta = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {module: code, f"{name}-1.0.dist-info/METADATA": meta, f"{name}-1.0.dist-info/WHEEL": wheel_meta}
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},"
                     f"{len(v)}\n" for k, v in files.items()) + f"{name}-1.0.dist-info/RECORD,,\n"
    target = path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, v in files.items():
            zf.writestr(k, v)
        zf.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return target, code


def test_a_command_over_the_limit_gets_its_largest_wheels_repacked_and_pip_installs_them(tmp_path):
    """Stored (uncompressed) wheels of 3 and 1.5 MiB against a 4 MiB budget: only the larger is repacked
    (largest first, then it fits), its members unchanged; pip installs the LZMA wheel offline."""
    import zipfile
    kit = load_script("gpu_kit")
    folder = tmp_path / "B"
    folder.mkdir()
    big, big_code = _wheel(folder, "bigpkg", 3 << 20, 0)
    small, _ = _wheel(folder, "smallpkg", 3 << 19, 1)
    small_before = small.read_bytes()
    kit.fit_under_limit(folder, tmp_path / "cache" / "lzma", 4 << 20, log=lambda *_: None)
    assert small.read_bytes() == small_before
    with zipfile.ZipFile(big) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
        assert zf.read("bigpkg/__init__.py") == big_code
    assert sum(w.stat().st_size for w in folder.glob("*.whl")) <= 4 << 20
    assert (tmp_path / "cache" / "lzma" / big.name).read_bytes() == big.read_bytes()
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        str(target), str(big)], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "bigpkg" / "__init__.py").read_bytes() == big_code
    # --lzma: every wheel over 1 MiB, the small one too
    kit.fit_under_limit(folder, tmp_path / "cache" / "lzma", 100 << 20, every=True, log=lambda *_: None)
    with zipfile.ZipFile(small) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}


def test_a_wheel_built_by_an_earlier_kit_is_found_again(tmp_path, monkeypatch):
    """A package with no wheel on the index (acvl-utils) is built here; a second kit finds pip's build of the
    pinned version already in the cache (pip writes no new file), not another version's."""
    kit = load_script("gpu_kit")
    for version in ("0.2.5", "0.2.6"):
        (tmp_path / f"acvl_utils-{version}-py3-none-any.whl").write_bytes(b"wheel")
    calls = []

    def fake_pip(args):              # no download for the target; the build succeeds and keeps the cached file
        calls.append(args[0])
        return SimpleNamespace(returncode=1 if args[0] == "download" else 0, stdout="", stderr="no wheel")

    monkeypatch.setattr(kit, "pip", fake_pip)
    chosen = kit.fetch("acvl-utils==0.2.5", tmp_path, "3.12", ["manylinux_2_17_x86_64"])
    assert chosen == tmp_path / "acvl_utils-0.2.5-py3-none-any.whl" and calls == ["download", "wheel"]
