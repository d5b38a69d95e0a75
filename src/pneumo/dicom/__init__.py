"""Pneumo inside a radiology department: results as DICOM objects, a DICOM node, a DICOMweb client.

- :mod:`pneumo.dicom.sr` - the TID 1500 Structured Report (highdicom);
- :mod:`pneumo.dicom.sc` - the Secondary Capture with the heat map and the result burnt in (highdicom);
- :mod:`pneumo.dicom.instance` - checks, prediction and both objects for one instance;
- :mod:`pneumo.dicom.outputs` - ``pneumo predict --dicom-out``;
- :mod:`pneumo.dicom.node` - ``pneumo dicom-listen``, the C-STORE SCP (pynetdicom);
- :mod:`pneumo.dicom.forward` - sending results on (``--forward``): the destination and the C-STORE SCU;
- :mod:`pneumo.dicom.dimse` - the DIMSE statuses and the checks of one received instance;
- :mod:`pneumo.dicom.dicomweb` - ``pneumo dicomweb``, WADO-RS in and STOW-RS out (dicomweb-client).

They need the ``dicom`` extra (``pip install 'pneumo[dicom]'``); :func:`require` says so in one line.
"""

from __future__ import annotations

import importlib.util

from pneumo.errors import MissingExtraError

_PACKAGES = {"highdicom": "highdicom", "pynetdicom": "pynetdicom", "dicomweb_client": "dicomweb-client"}


def require(*modules: str) -> None:
    """Raise MissingExtraError naming the ``dicom`` extra when one of ``modules`` is not installed."""
    for mod in modules or tuple(_PACKAGES):
        if importlib.util.find_spec(mod) is None:
            raise MissingExtraError(
                f"this command needs the 'dicom' extra ({_PACKAGES.get(mod, mod)} is not installed): "
                "pip install 'pneumo[dicom]'"
            )
