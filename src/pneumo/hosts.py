"""Network addresses: which a server binds and who may reach it (``pneumo serve``, ``pneumo dicom-listen``)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this machine can reach; a host name may resolve to anything."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
