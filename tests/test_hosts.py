"""One answer to "only this machine can reach it", for the web server and the DICOM node."""

import pytest

from pneumo.hosts import is_loopback


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhost", True), (" LocalHost ", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("192.168.1.5", False),
     ("example.org", False), ("", False)],
)  # fmt: skip
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected
