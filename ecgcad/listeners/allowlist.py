"""Peer address allow-lists (IPs and CIDR blocks) shared by the listeners."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ecgcad.errors import ConfigurationError


class AddressAllowList:
    """Addresses allowed to connect; an empty list allows every address.

    Parameters
    ----------
    entries:
        IP addresses or CIDR blocks (``"10.0.0.0/8"``, ``"::1"``).

    Raises
    ------
    ConfigurationError
        An entry is not an address or network.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        nets = []
        for entry in entries:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ConfigurationError(f"not an IP address or CIDR block: {entry!r}") from exc
        self._networks = nets

    def __bool__(self) -> bool:
        return bool(self._networks)

    def allows(self, address: str) -> bool:
        """True when ``address`` is in the list (or the list is empty)."""
        if not self._networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._networks)
