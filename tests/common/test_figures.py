import numpy as np
import pytest
import SimpleITK as sitk

from mim_nnunet.common.figures import RADIOLOGICAL_ORIENTATION, radiological


def _marked_image(orientation: str) -> sitk.Image:
    """A 4 x 5 x 3 volume (x, y, z) whose only bright voxel lies at the patient's right, anterior, in
    ``orientation``: the voxel is placed by its physical point, so SimpleITK decides where it lands."""
    image = sitk.Image(4, 5, 3, sitk.sitkFloat32)
    image = sitk.DICOMOrient(image, orientation)
    # LPS physical coordinates: right = smaller x, anterior = smaller y
    corners = [image.TransformIndexToPhysicalPoint((i, j, 1)) for i in (0, 3) for j in (0, 4)]
    right, anterior = min(c[0] for c in corners), min(c[1] for c in corners)
    image[image.TransformPhysicalPointToIndex((right, anterior, corners[0][2]))] = 1.0
    return image


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "RPS", "LAI"])
def test_radiological_view_puts_the_patients_right_anterior_at_the_top_left(orientation):
    array = sitk.GetArrayFromImage(_marked_image(orientation))         # (z, y, x)
    z = int(np.argmax(array.reshape(array.shape[0], -1).max(1)))
    view = radiological(array[z], orientation)
    assert view[0, 0] == 1.0 and view.sum() == 1.0
    # the same as SimpleITK's own reorientation to the radiological orientation, drawn as it is
    reference = sitk.GetArrayFromImage(sitk.DICOMOrient(_marked_image(orientation), RADIOLOGICAL_ORIENTATION))
    zr = int(np.argmax(reference.reshape(reference.shape[0], -1).max(1)))
    np.testing.assert_array_equal(view, reference[zr])


def test_radiological_view_refuses_a_non_axial_orientation():
    with pytest.raises(ValueError, match="'SAR' is not axial"):
        radiological(np.zeros((2, 2)), "SAR")
