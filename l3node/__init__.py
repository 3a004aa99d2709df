"""l3node: a DICOM node that measures body composition at the third lumbar vertebra."""

__version__ = "0.1.0"
