"""Crash under load: ECGs by storescu and ORUs by an MLLP client stream into `ecgcad serve` while it is
SIGKILLed three times at random moments (during input, scoring or delivery) and restarted.

Proves: every acknowledged message is stored once, scored once (one result per ECG and model version) and
delivered once per destination (the same SR SOP Instance UID / the same result's ORU counts once; a
retransmission after a crash between "sent" and its commit is counted and reported separately), and the
senders' resends of unacknowledged messages create no duplicates.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.peers import require, wait_for
from tests.reliability.harness import (
    Destination,
    MllpResender,
    ScriptedMllpSink,
    Serve,
    StorescuSender,
    UniqueStoreScp,
    figures,
    oru_messages,
    oru_result_key,
    write_ecg_files,
)


def _run(tmp_path: Path, n: int, kills: int = 3) -> None:
    require("storescu")
    seed = int(os.environ.get("ECGCAD_RELIABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    files = write_ecg_files(tmp_path / "in", n)
    import pydicom

    file_uid = {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    messages = oru_messages(n)
    pacs = UniqueStoreScp(tmp_path / "pacs")
    ehr = ScriptedMllpSink("aa")
    serve = Serve(
        tmp_path,
        [
            Destination("pacs", "dicom", pacs.port, ["sr"], ae_title="PACS"),
            Destination("ehr", "hl7", ehr.port, ["oru"]),
        ],
    )
    dicom = hl7 = None
    try:
        serve.start()
        dicom = StorescuSender(serve.dicom_port, files)
        hl7 = MllpResender(serve.hl7_port, messages)
        dicom.start()
        hl7.start()
        total = 4 * n  # 2n acknowledgements + 2n SRs + 2n ORUs ... progress measured on acks and deliveries

        def progress() -> int:
            assert dicom is not None and hl7 is not None
            delivered = sum(1 for p in pacs.folder.iterdir()) + len(ehr.messages)
            return len(dicom.acked) + len(hl7.acked) + delivered

        points = sorted(rng.uniform(0.08, 0.75) * total for _ in range(kills))
        kill_log = []
        for point in points:
            wait_for(lambda p=point: progress() >= p, 300, f"progress {point:.0f}/{total}", interval=0.01)
            time.sleep(rng.uniform(0, 0.2))
            kill_log.append(progress())
            serve.kill()
            time.sleep(rng.uniform(0, 0.5))
            serve.start()
        dicom.join(600)
        hl7.join(600)
        assert len(dicom.acked) == n, f"storescu: {len(dicom.acked)}/{n} acknowledged"
        assert len(hl7.acked) == n, f"MLLP: {len(hl7.acked)}/{n} acknowledged"
        wait_for(
            lambda: len(pacs.sop_uids()) >= 2 * n and len({oru_result_key(m) for m in ehr.messages}) >= 2 * n,
            600,
            "every SR and ORU delivered",
            interval=0.5,
        )
        time.sleep(1.0)  # a late duplicate would arrive now
        rc = serve.stop()
        assert rc == 0, serve.log_text()[-3000:]
        c = serve.counts()
        srs = pacs.sop_uids()
        orus = [oru_result_key(m) for m in ehr.messages]
        from collections import Counter

        oru_counts = Counter(orus)
        stored_dicom = [file_uid[f] for f in dicom.acked if c["by_uid"].get(file_uid[f], 0) >= 1]
        stored_hl7 = [cid for cid in hl7.acked if c["by_cid"].get(cid, 0) >= 1]
        dup_store = sum(v - 1 for v in c["by_uid"].values() if v > 1) + sum(
            v - 1 for v in c["by_cid"].values() if v > 1
        )
        dup_results = sum(v - 1 for v in c["per_result"].values() if v > 1)
        extra_sr = len(srs) - 2 * n
        extra_oru = len(oru_counts) - 2 * n
        figures(
            f"crash under load n={n} seed={seed}",
            sent=dicom.sent + hl7.sent,
            resent_by_senders=dicom.resent + hl7.resent,
            acknowledged=len(dicom.acked) + len(hl7.acked),
            stored=len(stored_dicom) + len(stored_hl7),
            ecgs=c["ecgs"],
            scored=c["scored"],
            results=len(c["per_result"]),
            delivered_sr=len(srs),
            delivered_oru=len(oru_counts),
            retransmitted_sr=sum(srs.values()) - len(srs),
            retransmitted_oru=len(orus) - len(oru_counts),
            duplicates=dup_store + dup_results + max(extra_sr, 0) + max(extra_oru, 0),
            lost=(2 * n - len(stored_dicom) - len(stored_hl7))
            + max(0, 2 * n - c["scored"])
            + max(0, 2 * n - len(srs))
            + max(0, 2 * n - len(oru_counts)),
            faults_injected=f"{serve.kills} SIGKILL at progress {kill_log}/{total}",
            deliveries=dict(c["deliveries"]),
        )
        assert len(stored_dicom) == n and len(stored_hl7) == n
        assert dup_store == 0, "a resend was stored twice"
        assert c["ecgs"] == 2 * n and c["scored"] == 2 * n
        assert len(c["per_result"]) == 2 * n and dup_results == 0, "an ECG was scored twice"
        assert extra_sr == 0 and extra_oru == 0, "a result was delivered under a second identity"
        assert set(c["deliveries"]) == {"pacs:sent", "ehr:sent"}, c["deliveries"]
        assert serve.kills == kills
    finally:
        for sender in (dicom, hl7):
            if sender is not None:
                sender.stop_event.set()
        serve.stop()
        pacs.stop()
        ehr.stop()
        for sender in (dicom, hl7):
            if sender is not None:
                sender.join(30)


@pytest.mark.peers
@pytest.mark.timeout(240)
def test_sigkill_three_times_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    # 30 + 30 keeps the default run short on a 2-core machine; the slow test runs 1,000 + 1,000.
    _run(tmp_path, int(os.environ.get("ECGCAD_RELIABILITY_SMALL_N", "30")))


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.timeout(1800)
def test_sigkill_three_times_under_load_1000_each(tmp_path: Path) -> None:
    _run(tmp_path, int(os.environ.get("ECGCAD_RELIABILITY_N", "1000")))
