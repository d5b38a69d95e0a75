"""Training-only code: fitting, finalising, augmentation, the decode cache, export and the networks.

These modules import torch (or exist only to feed it). Nothing on the inference path (predict, serve, the DICOM
node, batch runs) imports from here; ``tests/test_import_seam.py`` holds the line."""
