"""Every image file the project reads goes through here: one grayscale float32 array in [0, 1] out.

The format is sniffed from the content, never from the extension: DICOM carries ``DICM`` at byte 128, everything
else goes to Pillow, and data Pillow cannot identify gets one more chance as a DICOM dataset without the preamble.
Any failure leaves as :class:`ImageLoadError` whose message names the file and says what was wrong with it.

Import from here; the submodules are the parts: :mod:`~pneumo.imaging.loader` (the loaders),
:mod:`~pneumo.imaging.formats` (which content is an image), :mod:`~pneumo.imaging.limits` (pixel and memory limits,
opening a source, the reasons), :mod:`~pneumo.imaging.pillow_pixels` and :mod:`~pneumo.imaging.dicom_pixels`
(pixels to gray), :mod:`~pneumo.imaging.codestream` (compressed DICOM sizes), :mod:`~pneumo.imaging.resize`.
"""

from pneumo.errors import ImageLoadError
from pneumo.imaging.codestream import check_dicom_codestream
from pneumo.imaging.formats import (
    IMAGE_SUFFIXES,
    PILLOW_FORMATS,
    ImageInfo,
    is_dicom,
    is_text,
    maybe_headerless_dicom,
    sniff_format,
)
from pneumo.imaging.limits import DECODE_BUDGET, MAX_PIXELS, MIN_SIDE
from pneumo.imaging.loader import load_display_image, load_image, load_image_and_display, probe_image
from pneumo.imaging.resize import DISPLAY_MAX, resize_map

__all__ = [
    "DECODE_BUDGET",
    "DISPLAY_MAX",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "PILLOW_FORMATS",
    "ImageInfo",
    "ImageLoadError",
    "check_dicom_codestream",
    "is_dicom",
    "is_text",
    "load_display_image",
    "load_image",
    "load_image_and_display",
    "maybe_headerless_dicom",
    "probe_image",
    "resize_map",
    "sniff_format",
]
