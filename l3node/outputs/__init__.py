"""DICOM results: SEG of the tissues, TID 1500 SR of the measurements, secondary-capture overlay.

Public API::

    make_seg(source, labels, config, algorithm) -> highdicom.seg.Segmentation
    make_sr(source_images, l3_source, seg, measurements, l3, patient, config, algorithm)
        -> highdicom.sr.ComprehensiveSR | highdicom.sr.Comprehensive3DSR
    make_overlay(source, hu_plane, labels, measurements, l3, config) -> highdicom.sc.SCImage
    make_declined_sr(source_images, code, detail, config, algorithm) -> (same SR classes)
    load_algorithm_info(weights_dir, model_name=None) -> AlgorithmInfo
    run_dciodvfy(path) -> list[str]   (error lines; l3node.outputs.validate)

All objects are in the study and patient of the source images, with series numbers,
descriptions, manufacturer and institution from ``OutputsConfig``.
"""

from l3node.outputs.algorithm import AlgorithmInfo, fallback_algorithm_info, load_algorithm_info
from l3node.outputs.validate import run_dciodvfy
from l3node.outputs.write_overlay import make_overlay
from l3node.outputs.write_seg import make_seg
from l3node.outputs.write_sr import make_declined_sr, make_sr

__all__ = [
    "AlgorithmInfo",
    "fallback_algorithm_info",
    "load_algorithm_info",
    "make_declined_sr",
    "make_overlay",
    "make_seg",
    "make_sr",
    "run_dciodvfy",
]
