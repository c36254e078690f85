"""Destination down: PACS and EHR refuse connections, then refuse / answer AE, then time out, then come back
(the EHR with a duplicated AA). Nothing is lost, retries back off, nothing is delivered twice, and /metrics,
/api/v1/deliveries, /api/v1/jobs and the dashboard show the failing destination and the queue age meanwhile."""

from __future__ import annotations

import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.peers import free_port, require, wait_for
from tests.reliability.harness import (
    DCMTK_ENV,
    Destination,
    ScriptedMllpSink,
    Serve,
    UniqueStoreScp,
    figures,
    oru_result_key,
    write_ecg_files,
)

N = 4
PHASE_S = 6.0


@pytest.mark.peers
@pytest.mark.timeout(240)
def test_destinations_refusing_erring_and_timing_out_lose_nothing_and_deliver_once(tmp_path: Path) -> None:
    require("storescu")
    pacs_port = free_port()
    ehr = ScriptedMllpSink("refuse")
    serve = Serve(
        tmp_path,
        [
            Destination("pacs", "dicom", pacs_port, ["sr"], ae_title="PACS", timeout_s=2),
            Destination("ehr", "hl7", ehr.port, ["oru"], timeout_s=2),
        ],
        queue="",
    )
    pacs: UniqueStoreScp | None = None
    phases: list[str] = []
    try:
        serve.start()
        files = write_ecg_files(tmp_path / "in", N)
        out = subprocess.run(
            ["storescu", "-aec", "ECGCAD", "-aet", "CART1", "127.0.0.1", str(serve.dicom_port), *map(str, files)],
            capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

        # phase 1: nothing listens (connection refused) -----------------------------------------------------
        phases.append("refuse")
        token = serve.token("operator")
        wait_for(
            lambda: (
                serve.metrics().get('ecgcad_deliveries_total{destination="ehr",state="retrying"}', 0) >= 1
                and serve.metrics().get('ecgcad_deliveries_total{destination="pacs",state="retrying"}', 0)
                >= 1
            ),
            60,
            "retrying deliveries in /metrics",
        )
        time.sleep(PHASE_S)
        m = serve.metrics()
        age = m.get("ecgcad_queue_oldest_age_seconds", 0.0)
        failing = serve.get_json("/api/v1/deliveries?state=retrying", token)["items"]
        jobs = serve.get_json("/api/v1/jobs", token)
        dashboard = serve.get("/deliveries?state=retrying", token).decode(errors="replace")
        assert {d["destination"] for d in failing} == {"pacs", "ehr"}, failing
        assert all(d["last_response"] for d in failing)
        assert age > 0 or jobs.get("oldest_waiting_age_s", 0) > 0, (m, jobs)
        assert "ehr" in dashboard and "pacs" in dashboard
        attempts_refused = {d["id"]: d["attempts"] for d in failing}

        # phase 2: PACS refuses the association, the EHR answers AE --------------------------------------------
        phases.append("AR/AE")
        pacs = UniqueStoreScp(tmp_path / "pacs", port=pacs_port, args=("--refuse",))
        ehr.set_mode("ae")
        time.sleep(PHASE_S)
        pacs.stop()

        # phase 3: both accept and never answer (timeout) --------------------------------------------------------
        phases.append("timeout")
        pacs = UniqueStoreScp(tmp_path / "pacs-timeout", port=pacs_port, args=("--sleep-during", "30"))
        ehr.set_mode("timeout")
        time.sleep(PHASE_S)
        pacs.stop()
        assert not pacs.sop_uids(), "storescp with --sleep-during stored before the timeout"

        # phase 4: back (the EHR acknowledges every message twice) -----------------------------------------------
        phases.append("back")
        pacs = UniqueStoreScp(tmp_path / "pacs-ok", port=pacs_port)
        ehr.set_mode("aa_twice")
        wait_for(
            lambda: len(pacs.sop_uids()) >= N and len({oru_result_key(x) for x in ehr.messages}) >= N,
            120,
            "delivery after the destinations came back",
            interval=0.5,
        )
        time.sleep(2.0)
        assert serve.stop() == 0
        c = serve.counts()
        srs = pacs.sop_uids()
        orus = Counter(oru_result_key(x) for x in ehr.messages)

        # backoff: the gaps between one result's attempts at the EHR grow (0.2 s doubling, capped at 2 s)
        times: dict[str, list[float]] = defaultdict(list)
        for t, key in ehr.attempt_times:
            times[key].append(t)
        gaps = [b - a for ts in times.values() for a, b in zip(ts, ts[1:], strict=False)]
        first_gaps = [ts[1] - ts[0] for ts in times.values() if len(ts) > 2]
        later_gaps = [ts[-1] - ts[-2] for ts in times.values() if len(ts) > 2]
        figures(
            "destination down",
            sent=N,
            acknowledged=N,
            stored=len(c["by_uid"]),
            scored=c["scored"],
            delivered_sr=len(srs),
            delivered_oru=len(orus),
            duplicates=sum(v - 1 for v in srs.values()) + sum(v - 1 for v in orus.values()),
            lost=2 * N - len(srs) - len(orus),
            faults_injected=f"phases {phases} of {PHASE_S:.0f}s",
            ehr_attempts_by_mode=dict(ehr.attempts),
            max_attempts_per_delivery=c["max_delivery_attempts"],
            attempts_while_refused=sorted(attempts_refused.values()),
            min_gap_s=round(min(gaps), 2) if gaps else None,
            first_gap_mean_s=round(sum(first_gaps) / len(first_gaps), 2) if first_gaps else None,
            last_gap_mean_s=round(sum(later_gaps) / len(later_gaps), 2) if later_gaps else None,
        )
        assert len(srs) == N and set(srs.values()) == {1}, srs
        assert len(orus) == N and set(orus.values()) == {1}, orus
        assert set(c["deliveries"]) == {"pacs:sent", "ehr:sent"}, c["deliveries"]
        # backed off, not hammered: ~4 phases of 6 s with 0.2 s doubling to 2 s allow ~15 attempts, not hundreds
        assert c["max_delivery_attempts"] <= 20
        assert max(attempts_refused.values()) <= 8
        assert later_gaps and sum(later_gaps) / len(later_gaps) > sum(first_gaps) / len(first_gaps)
    finally:
        serve.stop()
        if pacs is not None:
            pacs.stop()
        ehr.stop()
