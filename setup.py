"""mim-nnunet: MiM self-supervised pre-training for 3D medical image segmentation with nnU-Net.

torch is not a declared dependency: install the build for your platform first (the README says how).
The top-level ``trainers/`` folder is installed as data (``<prefix>/share/mim_nnunet/trainers``), not as
an importable package, because nnU-Net imports its modules by bare name through ``nnUNet_extTrainer``.
"""

import re
from glob import glob

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', open("mim_nnunet/__init__.py").read()).group(1)

setup(
    name="mim-nnunet",
    version=VERSION,
    description="MiM (Mask in Mask) self-supervised pre-training for 3D segmentation, run through stock nnU-Net",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mim_nnunet", "mim_nnunet.*"]),
    data_files=[
        ("share/mim_nnunet/trainers", sorted(glob("trainers/*.py"))),
        ("share/mim_nnunet/plans/collections", sorted(glob("plans/collections/*.json"))),
        ("share/mim_nnunet/plans/demo", sorted(glob("plans/demo/*.json"))),
        ("share/mim_nnunet/plans/downstream", sorted(glob("plans/downstream/*.json"))),
    ],
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "monai>=1.5,<1.7",
        "SimpleITK>=2.3,<2.6",
        "numpy>=1.24,<3",
        "scipy>=1.10,<2",
        "safetensors>=0.4,<1",
        "tqdm>=4.60,<5",
        "matplotlib>=3.7,<4",
    ],
    # pytest 9.2 keeps node ids where pytest-xdist 3.8 cannot tag them: its --dist loadgroup then stops grouping
    extras_require={"test": ["pytest>=8,<9.2", "pytest-xdist>=3.5,<4"]},
    entry_points={
        "console_scripts": [
            "mim_nnunet = mim_nnunet.cli.main:main",
            "mim_pretrain = mim_nnunet.cli.pretrain:main",
            "mim_plan_and_preprocess = mim_nnunet.cli.plan:main",
            "mim_evaluate = mim_nnunet.cli.evaluate:main",
        ]
    },
)
