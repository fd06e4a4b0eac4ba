#!/usr/bin/env python
"""Write the GPU check kit: one wheelhouse per command of ``scripts/gpu_check.py`` (A and B), for an offline
machine whose Python already has torch (``bash scripts/gpu_kit.sh``; needs pip and network here).

Each wheelhouse holds a wheel of this checkout and every package that command imports and the target lacks,
one version of each, for the target's Python version and platform; never torch, triton or CUDA libraries
(the target's own are used). ``-have`` names what the target already has: a file written there by
``python3 -m pip list --format=freeze`` (or one name a line), or names separated by commas; default: only
torch, numpy and scipy, the least a CUDA PyTorch image holds. Versions: the one installed in the Python
that runs this script (the versions the test suite ran with) where it fits, else the newest that fits.
A package with no wheel on the index is built into one here when it is pure Python.

What one command carries (the checkout, its wheels) must stay under ``-limit_mib``: a command over it gets
its largest wheels repacked with LZMA members, largest first, until it fits (the same files and RECORD
hashes; Python's zipfile, which pip uses, reads them; SimpleITK's 50 MiB become 27 MiB, two minutes to write
once, cached). ``--lzma`` repacks every wheel over 1 MiB. ``kit.json`` and ``kit.md`` give the sizes.

    bash scripts/gpu_kit.sh -o gpu_kit -python 3.12 -have have.txt
    python3 scripts/gpu_check.py -command A -kit gpu_kit -out gpu_check      # there, offline
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

REPO = Path(__file__).resolve().parents[1]
OWN = "mim-nnunet"
# What each command of scripts/gpu_check.py imports beyond the standard library and torch (checked against
# real imports by tests/scripts/test_gpu_check.py). A: the pre-training checks (mim_pretrain reads images
# with SimpleITK; backbones import MONAI and nnU-Net's network builder; MONAI's Swin imports einops when
# built). B adds nnU-Net's training,
# preprocessing and prediction.
COMMANDS = {
    "A": [OWN, "monai", "nnunetv2", "simpleitk", "batchgenerators", "dynamic-network-architectures",
          "matplotlib", "tqdm", "safetensors", "numpy", "scipy", "einops"],
}
COMMANDS["B"] = COMMANDS["A"] + ["acvl-utils", "batchgeneratorsv2", "blosc2", "nibabel", "connected-components-3d",
                                 "seaborn", "pandas", "scikit-image", "scikit-learn", "pyyaml"]
# Their declared requirements are wider than what the commands import (nnU-Net's include imagecodecs,
# ~26 MB, that only its TIFF reader may use; dynamic-network-architectures needs timm only for architectures
# nnU-Net does not build here); what they import is listed above.
NO_FOLLOW = {OWN, "nnunetv2", "batchgenerators", "dynamic-network-architectures"}
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|cupy.*|jax.*)$")
DEFAULT_HAVE = ("torch", "numpy", "scipy")
DEFAULT_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64",
                     "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
                     "manylinux_2_34_x86_64", "manylinux1_x86_64")
LZMA_ABOVE_BYTES = 1 << 20
MIB = 1 << 20


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(value: Optional[str]) -> Set[str]:
    """Names the target has: a pip freeze / one-name-a-line file, or comma-separated names."""
    if not value:
        return {canonical(n) for n in DEFAULT_HAVE}
    path = Path(value)
    if path.is_file():
        words = [re.split(r"[=<>!~ @\[]", line.strip(), maxsplit=1)[0]
                 for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith(("#", "-", "Package"))]
    else:
        words = [w.strip() for w in value.split(",")]
    return {canonical(w) for w in words if w} | {"torch"}


def target_environment(python: str) -> Dict[str, str]:
    """Marker values of the target (CPython ``python`` on x86-64 Linux) for its wheels' requirements."""
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python + ".0"
            if python.count(".") == 1 else python, "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": "x86_64", "extra": ""}


def requirements_of(wheel: Path, env: Dict[str, str]) -> List[str]:
    """The wheel's ``Requires-Dist`` that apply on the target (extras left out)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8")
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                out.append(str(req).split(";")[0].strip())
    return out


def wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def pip(args: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, encoding="utf-8",
                          errors="replace")


def fetch(requirement: str, dest: Path, python: str, platforms: Iterable[str]) -> Path:
    """One wheel for ``requirement`` in ``dest``: from the index for the target, else built here (pure Python)."""
    before = set(dest.iterdir())
    name = canonical(re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0])
    pinned = requirement.split("==", 1)[1].strip() if "==" in requirement else None

    def found() -> List[Path]:
        new = [p for p in set(dest.iterdir()) - before if p.suffix == ".whl"]
        # a wheel written by an earlier kit is not new: pip keeps the file of that name
        return new or sorted(p for p in dest.glob("*.whl") if wheel_name(p) == name
                             and (pinned is None or p.name.split("-")[1] == pinned))

    plat = [a for p in platforms for a in ("--platform", p)]
    r = pip(["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation",
             "cp", *plat, "-d", str(dest), requirement])
    if r.returncode != 0:
        r2 = pip(["wheel", "-q", "--no-deps", "-w", str(dest), requirement])
        pure = [p for p in found() if p.name.endswith("-none-any.whl")]
        if r2.returncode != 0 or not pure:
            raise SystemExit(f"{requirement}: no wheel for Python {python} on {platforms[0] if platforms else '?'} "
                             f"and no pure-Python build ({(r.stderr or r2.stderr).strip().splitlines()[-1:]})")
        return pure[-1]
    return found()[-1]


def installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def resolve(roots: List[str], have: Set[str], dest: Path, python: str, platforms: List[str],
            own_wheel: Path, log=print) -> Dict[str, Path]:
    """Wheels (name -> file in ``dest``) for ``roots`` and, except for NO_FOLLOW, their requirements; what
    ``have`` names and NEVER matches is left to the target."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    env = target_environment(python)
    chosen: Dict[str, Path] = {}
    specs: Dict[str, SpecifierSet] = {}
    queue = [(canonical(r), SpecifierSet(), True) for r in roots]
    while queue:
        name, spec, root = queue.pop(0)
        if name in have or NEVER.match(name):
            continue
        specs[name] = specs.get(name, SpecifierSet()) & spec
        if name in chosen:
            version = chosen[name].name.split("-")[1]
            if not specs[name].contains(version, prereleases=True):
                raise SystemExit(f"{name}: {version} was chosen, but another package needs {specs[name]}")
            continue
        if name == OWN:
            wheel = dest / own_wheel.name
            shutil.copy2(own_wheel, wheel)
        else:
            here = installed_version(name)
            pinned = here if here and specs[name].contains(here, prereleases=True) else None
            wheel = fetch(f"{name}=={pinned}" if pinned else f"{name}{specs[name]}", dest, python, platforms)
        chosen[name] = wheel
        log(f"  {wheel.name} ({wheel.stat().st_size / MIB:.1f} MiB)")
        if name not in NO_FOLLOW:
            for text in requirements_of(wheel, env):
                req = Requirement(text)
                queue.append((canonical(req.name), req.specifier, False))
    return chosen


def repack_lzma(wheel: Path) -> None:
    """The same members, LZMA-compressed (Python's zipfile, and so pip, reads them)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_LZMA)
    if tmp.stat().st_size < wheel.stat().st_size:
        os.replace(tmp, wheel)
    else:
        tmp.unlink()


def fit_under_limit(folder: Path, packed_cache: Path, budget_bytes: float, every: bool = False,
                    log=print) -> None:
    """Repack the wheels in ``folder`` with LZMA, largest first, until they total at most ``budget_bytes``
    (``every``: each one over 1 MiB); a repacked wheel is kept in ``packed_cache`` for the next kit."""
    wheels = sorted(folder.glob("*.whl"), key=lambda w: w.stat().st_size, reverse=True)
    for wheel in wheels:
        total = sum(w.stat().st_size for w in folder.glob("*.whl"))
        if wheel.stat().st_size <= LZMA_ABOVE_BYTES or (total <= budget_bytes and not every):
            continue
        packed = packed_cache / wheel.name
        if not packed.is_file():
            log(f"  LZMA: {wheel.name} ({wheel.stat().st_size / MIB:.1f} MiB) ...")
            packed_cache.mkdir(parents=True, exist_ok=True)
            work = packed.with_suffix(".part")
            shutil.copy2(wheel, work)
            repack_lzma(work)
            os.replace(work, packed)
        shutil.copy2(packed, wheel)


def checkout_bytes() -> int:
    """What travels of the checkout: tracked files and untracked ones git does not ignore."""
    try:
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                               capture_output=True, check=True).stdout.decode("utf-8").split("\0")
        return sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())
    except (OSError, subprocess.CalledProcessError):
        return sum(p.stat().st_size for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts
                   and ".venv" not in p.parts)


def build_own_wheel(dest: Path) -> Path:
    r = pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(REPO)])
    wheels = list(dest.glob("mim_nnunet-*.whl"))
    if r.returncode != 0 or not wheels:
        raise SystemExit(f"could not build the mim-nnunet wheel: {r.stderr.strip()[-500:]}")
    return wheels[0]


def markdown(report: Dict) -> str:
    lines = [f"GPU check kit for Python {report['python']} ({report['platforms'][0]} ...), target has: "
             f"{', '.join(sorted(report['have']))}", "",
             "| command | wheels | wheels MiB | checkout MiB | travels MiB | limit MiB |", "|---|---|---|---|---|---|"]
    for cmd, entry in report["commands"].items():
        lines.append(f"| {cmd} | {len(entry['wheels'])} | {entry['wheels_mib']} | {report['checkout_mib']} | "
                     f"{entry['travels_mib']} | {report['limit_mib']} |")
    for cmd, entry in report["commands"].items():
        lines += ["", f"{cmd}: " + ", ".join(f"{w['file']} ({w['mib']})" for w in entry["wheels"])]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", default=str(REPO / "gpu_kit"), help="kit folder (default: gpu_kit in the checkout, "
                                                                  "which git ignores)")
    parser.add_argument("-python", default="3.12", help="the target's Python version (default: 3.12)")
    parser.add_argument("-platform", nargs="+", default=list(DEFAULT_PLATFORMS), help="the target's wheel platforms")
    parser.add_argument("-have", default=None, help="what the target has: pip freeze file or comma-separated names "
                                                    f"(default: {', '.join(DEFAULT_HAVE)})")
    parser.add_argument("-commands", default="A,B", help="wheelhouses to write (default: A,B)")
    parser.add_argument("-limit_mib", type=float, default=60.0, help="most a command may carry (default: 60)")
    parser.add_argument("--lzma", action="store_true", help="repack every wheel over 1 MiB with LZMA members (a "
                                                            "command over -limit_mib gets its largest ones repacked "
                                                            "anyway)")
    args = parser.parse_args(argv)
    out = Path(args.o)
    have = read_have(args.have)
    cache = out / "cache"
    for folder in (cache,):
        folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        own = build_own_wheel(Path(tmp))
        (cache / own.name).unlink(missing_ok=True)     # this checkout's wheel is always rebuilt
        report = {"python": args.python, "platforms": args.platform, "have": sorted(have), "commands": {},
                  "limit_mib": args.limit_mib, "checkout_mib": round(checkout_bytes() / MIB, 2)}
        for cmd in [c.strip() for c in args.commands.split(",") if c.strip()]:
            if cmd not in COMMANDS:
                parser.error(f"unknown command {cmd}; choose from {', '.join(COMMANDS)}")
            print(f"[gpu_kit] {cmd}:")
            wheels = resolve(COMMANDS[cmd], have, cache, args.python, args.platform, own)
            folder = out / cmd
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for wheel in wheels.values():
                shutil.copy2(wheel, folder / wheel.name)
            fit_under_limit(folder, cache / "lzma", (args.limit_mib * MIB) - checkout_bytes(), every=args.lzma)
            files = sorted(folder.glob("*.whl"))
            size = sum(f.stat().st_size for f in files)
            report["commands"][cmd] = {
                "wheels": [{"file": f.name, "mib": round(f.stat().st_size / MIB, 2)} for f in files],
                "wheels_mib": round(size / MIB, 2),
                "travels_mib": round((size + checkout_bytes()) / MIB, 2)}
    (out / "kit.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "kit.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    over = [c for c, e in report["commands"].items() if e["travels_mib"] > args.limit_mib]
    if over:
        print(f"[gpu_kit] over {args.limit_mib} MiB: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
