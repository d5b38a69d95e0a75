"""Training-only code: fitting, finalising, augmentation, the decode cache, export and the networks.

These modules import torch (or exist only to feed it). Nothing on the inference path (predict, serve, the DICOM
node, batch runs) imports from here; ``test_inference_path_imports_nothing_from_training`` in
``tests/test_inference.py`` holds the line."""
