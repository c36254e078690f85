"""Server-side TLS contexts for the listeners (DICOM TLS profile, MLLP over TLS)."""

from __future__ import annotations

import ssl

from ecgcad.config import TlsSettings
from ecgcad.errors import ConfigurationError


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """An :class:`ssl.SSLContext` for a listener, or ``None`` when TLS is off.

    Parameters
    ----------
    tls:
        The listener's TLS settings: certificate and key (PEM), CA bundle for client certificates, and
        whether a client certificate is required.

    Raises
    ------
    ConfigurationError
        TLS is enabled without a certificate and key, or a file cannot be loaded.
    """
    if not tls.enabled:
        return None
    if not tls.certificate or not tls.private_key:
        raise ConfigurationError("TLS is enabled but certificate or private_key is not set")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.certificate, tls.private_key)
        if tls.ca_certificates:
            ctx.load_verify_locations(tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS files: {exc}") from exc
    if tls.require_client_certificate:
        if not tls.ca_certificates:
            raise ConfigurationError("require_client_certificate needs ca_certificates")
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
