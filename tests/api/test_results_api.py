"""The results, deliveries and models routes: filters, pagination, detail with audit trail, PDF, actions."""

from __future__ import annotations

import pytest

from ecgcad.context import AppContext
from ecgcad.errors import BackPressureError, QueueError
from tests.api.conftest import PATIENT_FLAGGED, PATIENT_LOW, ActionCalls, Seeded, TestClient, Tokens, bearer


def _ids(client: TestClient, token: str, query: str) -> list[int]:
    response = client.get(f"/api/v1/ecgs{query}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_list_items_carry_identifiers_state_result_and_deliveries(
    client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    body = client.get("/api/v1/ecgs?flagged=true", headers=bearer(tokens.viewer)).json()
    assert body["next"] is None
    (item,) = body["items"]
    assert item["id"] == seeded.flagged_ecg and item["patient_id"] == PATIENT_FLAGGED
    assert item["issuer_of_patient_id"] == "HOSP" and item["accession_number"] == "ACC0001"
    assert item["study_instance_uid"] == "1.2.826.0.1.1" and item["state"] == "scored"
    result = item["result"]
    assert result["probabilities"]["rca"] == pytest.approx(0.42)
    assert result["flags"] == {"rca": True, "lm": False, "lad": False, "lcx": False}
    assert result["model_version"] == seeded.model_version and result["any_flagged"] is True
    assert {(d["destination"], d["state"]) for d in item["deliveries"]} == {
        ("pacs", "failed"),
        ("ehr", "sent"),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?flagged=true", ["flagged"]),
        ("?flagged=false", ["low"]),
        ("?vessel=rca", ["flagged"]),
        ("?vessel=lad", []),
        ("?vessel=rca&flagged=false", ["low"]),
        (f"?patient_id={PATIENT_LOW}", ["not_evaluated", "low"]),
        ("?accession_number=ACC0004", ["unscored"]),
        ("?state=not_evaluated", ["not_evaluated"]),
        ("?state=scored&until=2000-01-01", []),
    ],
)
def test_filters(client: TestClient, seeded: Seeded, tokens: Tokens, query: str, expected: list[str]) -> None:
    names = {
        seeded.flagged_ecg: "flagged",
        seeded.low_ecg: "low",
        seeded.not_evaluated_ecg: "not_evaluated",
        seeded.unscored_ecg: "unscored",
    }
    assert [names[i] for i in _ids(client, tokens.viewer, query)] == expected


def test_since_bounds_the_time_received(client: TestClient, seeded: Seeded, tokens: Tokens) -> None:
    import datetime as dt

    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    assert seeded.low_ecg not in _ids(client, tokens.viewer, f"?since={yesterday}")
    assert seeded.low_ecg in _ids(client, tokens.viewer, f"?until={yesterday}")


def test_bad_filter_values_are_422(client: TestClient, seeded: Seeded, tokens: Tokens) -> None:
    for query in ("?vessel=aorta", "?flagged=maybe", "?since=yesterday", "?limit=0"):
        assert client.get(f"/api/v1/ecgs{query}", headers=bearer(tokens.viewer)).status_code == 422


def test_pages_follow_next_until_null(client: TestClient, seeded: Seeded, tokens: Tokens) -> None:
    seen: list[int] = []
    url: str | None = "/api/v1/ecgs?limit=3"
    pages = 0
    while url is not None:
        body = client.get(url, headers=bearer(tokens.viewer)).json()
        seen += [i["id"] for i in body["items"]]
        url, pages = body["next"], pages + 1
    assert pages == 2 and seen == sorted(seeded.ecg_ids, reverse=True)


def test_detail_has_results_deliveries_and_audit_trail(
    client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    body = client.get(f"/api/v1/ecgs/{seeded.flagged_ecg}", headers=bearer(tokens.viewer)).json()
    assert body["patient_name"] == "DOE^JANE" and len(body["results"]) == 1
    assert len(body["results"][0]["deliveries"]) == 2
    assert [e["event_type"] for e in body["audit_trail"]] == []  # read before this call's event commits
    again = client.get(f"/api/v1/ecgs/{seeded.flagged_ecg}", headers=bearer(tokens.viewer)).json()
    assert [(e["event_type"], e["user"]) for e in again["audit_trail"]] == [("api.read", "victor-viewer")]
    assert client.get("/api/v1/ecgs/424242", headers=bearer(tokens.viewer)).status_code == 404


def test_report_pdf(
    client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: ActionCalls
) -> None:
    response = client.get(f"/api/v1/ecgs/{seeded.flagged_ecg}/report.pdf", headers=bearer(tokens.viewer))
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    assert client.get("/api/v1/ecgs/424242/report.pdf", headers=bearer(tokens.viewer)).status_code == 404
    stand_in_actions.fail_with = LookupError("no result yet")
    assert (
        client.get(
            f"/api/v1/ecgs/{seeded.unscored_ecg}/report.pdf", headers=bearer(tokens.viewer)
        ).status_code
        == 404
    )


def test_actions_pass_who_asked_and_translate_errors(
    client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: ActionCalls
) -> None:
    response = client.post(
        f"/api/v1/deliveries/{seeded.failed_delivery}/resend", headers=bearer(tokens.operator)
    )
    assert response.status_code == 200 and response.json()["state"] == "pending"
    response = client.post(f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore", headers=bearer(tokens.admin))
    assert response.status_code == 200
    assert stand_in_actions.calls == [
        (
            "resend",
            seeded.failed_delivery,
            {"user": "oscar-operator", "role": "operator", "address": "testclient"},
        ),
        ("rescore", seeded.flagged_ecg, {"user": "alice-admin", "role": "admin", "address": "testclient"}),
    ]
    assert client.post("/api/v1/deliveries/424242/resend", headers=bearer(tokens.operator)).status_code == 404
    stand_in_actions.fail_with = QueueError("already queued")
    assert (
        client.post(f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore", headers=bearer(tokens.operator)).status_code
        == 409
    )
    stand_in_actions.fail_with = BackPressureError()
    assert (
        client.post(f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore", headers=bearer(tokens.operator)).status_code
        == 503
    )


def test_real_pipeline_resend_when_installed(
    ctx: AppContext, client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    """Through ``ecgcad.pipeline.actions`` (no stand-in): the delivery is queued again and audited."""
    response = client.post(
        f"/api/v1/deliveries/{seeded.failed_delivery}/resend", headers=bearer(tokens.operator)
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "pending"
    deliveries = client.get(
        "/api/v1/deliveries?destination=pacs&state=pending", headers=bearer(tokens.operator)
    )
    assert [d["id"] for d in deliveries.json()["items"]] == [seeded.failed_delivery]


def test_deliveries_filters_and_models(client: TestClient, seeded: Seeded, tokens: Tokens) -> None:
    body = client.get("/api/v1/deliveries?state=failed", headers=bearer(tokens.operator)).json()
    assert [(d["id"], d["destination"], d["ecg_id"]) for d in body["items"]] == [
        (seeded.failed_delivery, "pacs", seeded.flagged_ecg)
    ]
    assert (
        len(
            client.get("/api/v1/deliveries?destination=pacs", headers=bearer(tokens.operator)).json()["items"]
        )
        == 2
    )
    models = client.get("/api/v1/models", headers=bearer(tokens.viewer)).json()
    assert models["active"] == ["demo-1"] and models["shadow"] == ["demo-2"]
    assert {m["checkpoint_sha256"] for m in models["items"]} == {"ab" * 32, "cd" * 32}


def test_overview_counts(client: TestClient, seeded: Seeded, tokens: Tokens) -> None:
    page = client.get("/", headers=bearer(tokens.viewer)).text
    assert 'id="received-today">3<' in page  # the low-risk ECG arrived three days ago
    assert 'id="flagged-today">1<' in page
    assert "too_short" in page and "pacs" in page
    assert PATIENT_FLAGGED not in page


def test_logs_carry_no_patient_identifiers(
    client: TestClient,
    seeded: Seeded,
    tokens: Tokens,
    stand_in_actions: ActionCalls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    stand_in_actions.fail_with = RuntimeError("boom")
    for path in (f"/api/v1/ecgs?patient_id={PATIENT_FLAGGED}", f"/api/v1/ecgs/{seeded.flagged_ecg}", "/ecgs"):
        client.get(path, headers=bearer(tokens.admin))
    response = client.post(f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore", headers=bearer(tokens.admin))
    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
    assert "action rescore failed" in caplog.text  # logged with its traceback for the operators
    server_side = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
        if not r.name.startswith("httpx")  # the test client's own request log
    )
    assert "DOE" not in server_side and PATIENT_FLAGGED not in server_side
