"""Which modality a case is: what its source declares, what its header or intensities show, and the one
that normalises it (CT: HU window; MRI: z-score per case, see :mod:`.intensity`).

Sources declare ``CT``, ``MRI`` or ``auto`` (folders and datalists by default): ``auto`` takes the
detected modality; a declaration is followed, with a warning when the case looks otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import SimpleITK as sitk

MODALITIES = ("CT", "MRI")
AUTO = "auto"
# CT in HU always holds fat (-100) or air (-1000) somewhere; MRI magnitudes are >= 0 and z-scored MRI
# rarely goes below -5. So a 0.5th percentile under -50 says HU.
CT_P0_5_BELOW = -50.0
DICOM_MODALITY_TAG = "0008|0060"
# header values (DICOM Modality, MetaImage Modality, any "modality" key of NRRD and the like)
HEADER_VALUES = {"CT": "CT", "MET_MOD_CT": "CT", "MR": "MRI", "MRI": "MRI", "MET_MOD_MR": "MRI"}


def declared_modality(name: Optional[str]) -> str:
    """A source's declaration -> ``CT``, ``MRI`` or ``auto``. nnU-Net channel names other than CT (T1,
    T2, FLAIR, ADC, ...) are MRI-like: normalised per case."""
    if name is None or name.strip().lower() == AUTO:
        return AUTO
    return "CT" if name.strip().upper() == "CT" else "MRI"


def header_modality(path: str) -> Optional[str]:
    """The modality a file's header states (for a DICOM folder: its first file's), or None."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        if not files:
            return None
        p = files[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    for key in reader.GetMetaDataKeys():
        if key == DICOM_MODALITY_TAG or "modality" in key.lower():
            value = reader.GetMetaData(key).strip().upper()
            if value in HEADER_VALUES:
                return HEADER_VALUES[value]
    return None


def detect_modality(header: Optional[str], p0_5: float) -> Tuple[str, str]:
    """(CT or MRI, the evidence) from the header's statement, else from the 0.5th intensity percentile."""
    if header is not None:
        return header, f"the header says {header}"
    if p0_5 < CT_P0_5_BELOW:
        return "CT", f"intensities reach {p0_5:.0f} (HU of fat or air)"
    return "MRI", f"no intensity below {CT_P0_5_BELOW:g} (0.5th percentile {p0_5:.3g}): not HU"


def resolve_modality(declared: str, detected: str, evidence: str) -> Tuple[str, Optional[str]]:
    """(the modality that normalises the case, a warning or None): a declaration wins, ``auto`` detects."""
    if declared == AUTO:
        return detected, None
    if declared != detected:
        return declared, (f"declared {declared} but looks like {detected} ({evidence}); normalised as {declared} "
                          f"(-modality auto would detect it)")
    return declared, None
