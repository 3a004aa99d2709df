"""Synthetic torso CT phantoms with exactly known anatomy, variants and ground truth (issue 3).

>>> from l3node.phantom import make_phantom
>>> phantom = make_phantom("sacralization", seed=3, matrix=256, slice_thickness_mm=5.0)
>>> phantom.ground_truth["l3_inferior_endplate_z_mm"]  # doctest: +SKIP
"""

from l3node.phantom.acquisition import random_acquisition
from l3node.phantom.dicom_export import main_phantom, write_dicom_series, write_ground_truth, write_nifti
from l3node.phantom.generate import Phantom, make_phantom
from l3node.phantom.materials import STRUCTURE_NAMES, Structure
from l3node.phantom.variants import VARIANT_CLASS, VARIANTS

__all__ = ["VARIANTS", "VARIANT_CLASS", "Phantom", "make_phantom", "random_acquisition", "STRUCTURE_NAMES",
           "Structure",
           "write_dicom_series", "write_nifti", "write_ground_truth", "main_phantom"]
