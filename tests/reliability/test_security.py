"""Security and privacy: DICOM TLS (dcmtk storescu +tls) and MLLP over TLS (Python ssl) with a test CA made
by the openssl CLI; plain and unauthenticated peers refused; calling-AE / address allow-lists; no PHI and no
secrets (API token, TLS private key, database password) in any log output of `ecgcad serve` or in
`ecgcad config show`."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.integration.transport.mllp import MllpDecoder, frame
from ecgcad.listeners.dicom_scp import DicomScp
from ecgcad.listeners.hl7_server import Hl7Server
from tests.listeners.conftest import make_settings
from tests.listeners.hl7util import msa, oru
from tests.peers import require, wait_for
from tests.reliability.harness import (
    DCMTK_ENV,
    ROOT,
    Destination,
    MllpResender,
    ScriptedMllpSink,
    Serve,
    UniqueStoreScp,
    _template,
    dicom_bytes,
    figures,
    oru_messages,
    oru_result_key,
    unique_ecg,
)

# unique strings: if any of them shows up in a log, a log line carries PHI
PHI = {
    "PatientName": "Qzxplorr^Vindaquist",
    "PatientBirthDate": "19170923",
    "AccessionNumber": "ACCQZ7731X",
}
PHI_PATIENT_ID = "PHIQZ"  # + 5 digits, set per object


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate (openssl CLI)."""
    require("openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=ecgcad test CA", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client", "rogue"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else name}", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    # a certificate from no trusted CA (self-signed)
    _openssl(
        "x509", "-req", "-in", "rogue.csr", "-signkey", "rogue.key", "-out", "rogue.crt", "-days", "2", cwd=d
    )
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def _tls(pki: dict[str, Path], require_client: bool = True) -> dict[str, Any]:
    return {
        "enabled": True,
        "certificate": str(pki["server_crt"]),
        "private_key": str(pki["server_key"]),
        "ca_certificates": str(pki["ca_crt"]),
        "require_client_certificate": require_client,
    }


@pytest.fixture
def tls_listeners(tmp_path: Path, pki: dict[str, Path]) -> Iterator[tuple[AppContext, DicomScp, Hl7Server]]:
    settings = make_settings(
        tmp_path / "svc",
        dicom={"tls": _tls(pki), "allowed_calling_aets": ["CART1"]},
        hl7={"tls": _tls(pki)},
    )
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    scp, hl7 = DicomScp(ctx), Hl7Server(ctx)
    scp.start()
    hl7.start()
    try:
        yield ctx, scp, hl7
    finally:
        scp.stop()
        hl7.stop()
        ctx.close()


def _storescu(port: int, file: Path, *tls: str, aet: str = "CART1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", *tls, "-to", "10", "-ta", "10", "-td", "10", "-aec", "ECGCAD", "-aet", aet,
         "127.0.0.1", str(port), str(file)],
        capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
    )  # fmt: skip


def _client_ctx(pki: dict[str, Path], cert: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca_crt"]))
    if cert:
        ctx.load_cert_chain(str(pki[f"{cert}_crt"]), str(pki[f"{cert}_key"]))
    return ctx


def _mllp_tls(port: int, ctx: ssl.SSLContext | None, cid: str) -> str:
    """MSA-1 of the ACK, or the name of the failure."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw
        with sock:
            sock.sendall(frame(oru(cid)))
            dec = MllpDecoder()
            while True:
                data = sock.recv(65536)
                if not data:
                    return "closed"
                acks = dec.feed(data)
                if acks:
                    return msa(acks[0])[1]
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__


def test_dicom_tls_with_storescu_and_refusals(
    tls_listeners: Any, pki: dict[str, Path], tmp_path: Path
) -> None:
    require("storescu")
    _, scp, _ = tls_listeners
    port = scp.address[1]
    f = tmp_path / "ecg.dcm"
    f.write_bytes(dicom_bytes(unique_ecg(_template(), 0, "TLS")))
    tls_ok = ("+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"]))
    ok = _storescu(port, f, *tls_ok)
    plain = _storescu(port, f)
    rogue = _storescu(
        port, f, "+tls", str(pki["rogue_key"]), str(pki["rogue_crt"]), "+cf", str(pki["ca_crt"])
    )
    bad_ae = _storescu(port, f, *tls_ok, aet="INTRUDER")
    figures(
        "DICOM TLS",
        storescu_tls=ok.returncode,
        storescu_plain=plain.returncode,
        storescu_untrusted_cert=rogue.returncode,
        storescu_tls_wrong_calling_ae=bad_ae.returncode,
        stored=scp.stored,
    )
    assert ok.returncode == 0, ok.stderr
    assert plain.returncode != 0 and rogue.returncode != 0 and bad_ae.returncode != 0
    assert scp.stored == 1


def test_mllp_over_tls_and_refusals(tls_listeners: Any, pki: dict[str, Path]) -> None:
    _, _, hl7 = tls_listeners
    port = hl7.address[1]
    results = {
        "tls_client_cert": _mllp_tls(port, _client_ctx(pki), "TLS1"),
        "tls_no_client_cert": _mllp_tls(port, _client_ctx(pki, None), "TLS2"),
        "tls_untrusted_cert": _mllp_tls(port, _client_ctx(pki, "rogue"), "TLS3"),
        "plain_tcp": _mllp_tls(port, None, "TLS4"),
    }
    figures("MLLP TLS", **results)
    assert results["tls_client_cert"] == "AA"
    assert all(v != "AA" for k, v in results.items() if k != "tls_client_cert"), results


def test_address_allow_lists_refuse_both_listeners(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "svc",
        dicom={"allowed_addresses": ["10.9.9.0/24"]},
        hl7={"allowed_addresses": ["10.9.9.9"]},
    )
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    scp, hl7 = DicomScp(ctx), Hl7Server(ctx)
    scp.start()
    hl7.start()
    try:
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE

        ae = AE(ae_title="CART1")
        ae.add_requested_context("1.2.840.10008.1.1", ExplicitVRLittleEndian)
        ae.acse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", scp.address[1])
        dicom_ok = assoc.is_established
        if dicom_ok:
            assoc.release()
        hl7_ack = _mllp_tls(hl7.address[1], None, "ALLOW1")
        figures("address allow-lists", dicom_associated=dicom_ok, hl7_answer=hl7_ack)
        assert not dicom_ok and hl7_ack != "AA"
    finally:
        scp.stop()
        hl7.stop()
        ctx.close()


@pytest.mark.peers
@pytest.mark.timeout(240)
def test_end_to_end_over_tls_logs_carry_no_phi_and_no_secrets(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The whole flow (storescu +tls and MLLP/TLS in; SR to storescp and ORU to an MLLP sink out; API used
    with a token) with unique patient strings: none of them, nor the token, the private key or the database
    password, appears in anything `ecgcad serve` or the CLI logged."""
    require("storescu")
    pacs = UniqueStoreScp(tmp_path / "pacs")
    ehr = ScriptedMllpSink("aa")
    tls_toml = (
        "[{section}.tls]\nenabled = true\n"
        f'certificate = "{pki["server_crt"]}"\nprivate_key = "{pki["server_key"]}"\n'
        f'ca_certificates = "{pki["ca_crt"]}"\nrequire_client_certificate = true\n'
    )
    serve = Serve(
        tmp_path,
        [
            Destination("pacs", "dicom", pacs.port, ["sr"], ae_title="PACS"),
            Destination("ehr", "hl7", ehr.port, ["oru"]),
        ],
        extra='log_level = "DEBUG"',
        dicom='allowed_calling_aets = ["CART1"]\n' + tls_toml.format(section="dicom"),
        hl7=tls_toml.format(section="hl7"),
    )
    try:
        serve.start()
        ds = unique_ecg(_template(), 0, PHI_PATIENT_ID, **PHI)
        f = tmp_path / "phi.dcm"
        f.write_bytes(dicom_bytes(ds))
        out = _storescu(serve.dicom_port, f, "+tls", str(pki["client_key"]), str(pki["client_crt"]),
                        "+cf", str(pki["ca_crt"]))  # fmt: skip
        assert out.returncode == 0, out.stderr
        messages = oru_messages(
            1,
            tag=PHI_PATIENT_ID + "H",
            **PHI,
            patient_name=PHI["PatientName"],
            patient_birth_date=PHI["PatientBirthDate"],
            accession_number=PHI["AccessionNumber"],
        )
        sender = MllpResender(serve.hl7_port, messages, deadline_s=60, ssl_context=_client_ctx(pki))
        sender.start()
        sender.join(60)
        assert sender.acked == {messages[0][0]}
        wait_for(
            lambda: len(pacs.sop_uids()) >= 2 and len({oru_result_key(m) for m in ehr.messages}) >= 2,
            120,
            "SRs and ORUs",
        )
        token = serve.token("admin")
        assert serve.get_json("/api/v1/ecgs", token)["items"]
        serve.get("/ecgs", token)
        # the identifiers did flow through: they are in what was delivered
        assert any(PHI["AccessionNumber"].encode() in m for m in ehr.messages)
        assert serve.stop() == 0
        shown = subprocess.run(
            [sys.executable, "-m", "ecgcad", "config", "show", "--config", str(serve.config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "ECGCAD_DATABASE_URL": "postgresql+psycopg://ecg:Pw0rdQZ91x@db.invalid:5432/ecgcad"},
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        log = serve.log_text()
        key_body = "".join(pki["server_key"].read_text().splitlines()[1:-1])
        secrets = {
            "api token": token,
            "TLS private key (first 40 chars)": key_body[:40],
            "database password": "Pw0rdQZ91x",
        }
        phi_strings = [PHI_PATIENT_ID, *PHI.values(), "Qzxplorr", "Vindaquist"]
        hits_phi = [s for s in phi_strings if s in log]
        hits_secret = [k for k, s in secrets.items() if s in log or s in shown.stdout + shown.stderr]
        figures(
            "no PHI / no secrets",
            log_lines=len(log.splitlines()),
            log_level="DEBUG",
            phi_strings_checked=len(phi_strings),
            phi_found=hits_phi,
            secrets_checked=list(secrets),
            secrets_found=hits_secret,
            delivered=f"{len(pacs.sop_uids())} SR, {len(ehr.messages)} ORU",
        )
        assert not hits_phi, f"PHI in serve log: {hits_phi}"
        assert not hits_secret, f"secrets in log or config show: {hits_secret}"
        assert "***" in shown.stdout
    finally:
        serve.stop()
        pacs.stop()
        ehr.stop()
