"""``/readyz`` reports each configured destination's state from the deliveries table."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import Seeded


def test_readiness_reports_each_destination_from_its_deliveries(client: TestClient, seeded: Seeded) -> None:
    body = client.get("/readyz").json()
    destinations = body["checks"]["destinations"]
    assert set(destinations) == {"pacs", "ehr"}
    pacs, ehr = destinations["pacs"], destinations["ehr"]
    assert (pacs["kind"], pacs["failed"], pacs["waiting"]) == ("dicom", 1, 0)
    assert pacs["last_error"] == "0xA700 out of resources"
    assert (ehr["kind"], ehr["failed"], ehr["waiting"], ehr["last_error"]) == ("hl7", 0, 0, None)
    assert ehr["last_sent_at"] is not None


def test_a_failed_destination_does_not_make_the_service_unready(client: TestClient, seeded: Seeded) -> None:
    body = client.get("/readyz").json()
    assert body["checks"]["destinations"]["pacs"]["failed"] == 1
    essential = {k: v for k, v in body["checks"].items() if k in ("database", "dicom", "hl7", "worker")}
    assert body["ready"] is all(essential.values())
