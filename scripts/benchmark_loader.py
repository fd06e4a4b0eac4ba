#!/usr/bin/env python
"""Crops per second from the preprocessed store vs decoding the original .nii.gz each time.

Writes a few CT-like volumes (NIfTI), prepares them with the real pipeline (fingerprint, plan,
preprocess into the store), then reads the same number of random 2S crops (a) from the store through
memory maps and (b) by decoding the NIfTI with SimpleITK and cropping. Prints one JSON line, with the
host's probe under ``host`` (:mod:`mim_nnunet.common.host`).

    python scripts/benchmark_loader.py                  # 2 volumes of 300x512x512, 2S = 192^3
    python scripts/benchmark_loader.py -shape 64 96 96 -crops 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def build_parser() -> argparse.ArgumentParser:
    from mim_nnunet.cli.flags import add_flag
    parser = argparse.ArgumentParser(prog="benchmark_loader.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "-volumes", "--volumes", type=int, default=2)
    add_flag(parser, "-shape", "--shape", type=int, nargs=3, default=(300, 512, 512),
             help="z y x voxels at 1 mm (default: a typical abdominal CT, %(default)s)")
    add_flag(parser, "-crops", "--crops", type=int, default=10)
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["nnUNet_preprocessed"] = str(tmp / "pre")
        from mim_nnunet.common.host import probe_host
        from mim_nnunet.data.loader import IndexedCropBatches
        from mim_nnunet.data.pipeline import prepare

        rng = np.random.default_rng(0)
        files = []
        for i in range(args.volumes):
            # an elliptic body of noisy soft tissue in air, as a CT scan looks to a compressor
            z, y, x = np.ogrid[:args.shape[0], :args.shape[1], :args.shape[2]]
            inside = ((y - args.shape[1] / 2) / (0.4 * args.shape[1])) ** 2 + \
                     ((x - args.shape[2] / 2) / (0.45 * args.shape[2])) ** 2 <= 1
            body = np.where(inside, rng.normal(40, 30, args.shape), -1000).astype(np.int16)
            img = sitk.GetImageFromArray(body)
            img.SetSpacing((1.0, 1.0, 1.0))
            files.append(tmp / "raw" / f"ct{i}.nii.gz")
            files[-1].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(img, str(files[-1]), useCompression=True)
        prepared = prepare([str(tmp / "raw")], name="bench", size="base", num_processes=2, log=lambda *_: None)
        crop = [2 * s for s in prepared.plan["input_size"]]              # L1 crops are 2S

        batches = IndexedCropBatches(prepared.store, crop, batch_size=1, seed=0)
        batches.batch(0)                                                    # open files, warm the cache
        start = time.perf_counter()
        for k in range(args.crops):
            batches.batch(1 + k)
        store_s = (time.perf_counter() - start) / args.crops

        start = time.perf_counter()
        for k in range(args.crops):
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(files[k % len(files)])))
            corner = [int(rng.integers(0, max(1, n - c + 1))) for n, c in zip(array.shape, crop)]
            _ = array[tuple(slice(o, o + c) for o, c in zip(corner, crop))].astype(np.float32)
        nifti_s = (time.perf_counter() - start) / args.crops

        itemsize = np.dtype(prepared.plan["store_dtype"]).itemsize
        print(json.dumps({
            "crop_size": crop, "volume_shape": list(args.shape), "crops": args.crops,
            "store_crops_per_s": round(1 / store_s, 2), "nifti_crops_per_s": round(1 / nifti_s, 2),
            "speedup": round(nifti_s / store_s, 1),
            "store_bytes_per_crop": int(np.prod(crop)) * itemsize,
            "nifti_bytes_per_crop": int(np.mean([f.stat().st_size for f in files])),
            "nifti_decoded_bytes_per_crop": int(np.prod(args.shape)) * 2,
            "host": probe_host().as_dict(),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
