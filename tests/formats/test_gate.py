"""Quality and intended-use gate: the real ECG passes, and each reason fires on its own."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from ecgcad.config import GateSettings
from ecgcad.integration.formats.ecg import LEADS, Ecg
from ecgcad.integration.formats.gate import GateReason, check
from ecgcad.integration.formats.readers import decode
from ecgcad.testing import ecg_writers as w


def _ecg(signal: np.ndarray, rate: float, **ids) -> Ecg:
    identifiers = dataclasses.replace(w.TEST_IDENTIFIERS, **ids)
    return Ecg(signal.astype(np.float32), rate, "dicom", identifiers=identifiers, source_leads=list(LEADS))


def test_real_ecg_is_scorable_with_default_settings(real):
    verdict = check(real)
    assert verdict.scorable, verdict.to_dict()
    assert verdict.reasons == [] and verdict.age_years == 42.0
    assert verdict.to_dict()["scorable"] is True


@pytest.mark.parametrize("variant", ["muse9", "nx"])
def test_eight_lead_muse_export_is_scorable(x500, variant):
    assert check(decode(w.write_muse_xml(x500, 500, variant=variant))).scorable


def test_too_few_leads(x500):
    ecg = decode(w.build_dicom_ecg(x500, 500, leads=("I", "II", "V1", "V2", "V3", "V4")))
    assert check(ecg).codes == ["too_few_leads"]


def test_too_short(x500):
    verdict = check(_ecg(x500[:, :2500], 500.0))
    assert verdict.codes == ["too_short"]
    assert "5.0 s" in verdict.reasons[0].text


def test_low_sampling_rate():
    x = w.real_signal(200.0)
    assert check(_ecg(x, 200.0)).codes == ["low_sampling_rate"]


def test_flat_lead(x500):
    x = x500.copy()
    x[LEADS.index("V3")] = 0.01
    verdict = check(_ecg(x, 500.0))
    assert verdict.codes == ["flat_lead"] and verdict.reasons[0].leads == ("V3",)


def test_disconnected_lead(x500):
    x = x500.copy()
    x[LEADS.index("aVL")] = np.nan  # limb leads still give two independent leads
    assert check(_ecg(x, 500.0)).codes == ["flat_lead"]


def test_disconnected_precordial_lead_also_leaves_too_few_leads(x500):
    x = x500.copy()
    x[LEADS.index("V5")] = np.nan
    assert check(_ecg(x, 500.0)).codes == ["too_few_leads", "flat_lead"]


def test_saturation(x500):
    x = x500.copy()
    i = LEADS.index("V2")
    x[i] = np.clip(x[i], -0.2, 0.2)
    verdict = check(_ecg(x, 500.0))
    assert verdict.codes == ["saturation"] and verdict.reasons[0].leads == ("V2",)


def test_noise(x500):
    x = x500.copy()
    x[LEADS.index("V4")] += np.random.default_rng(0).normal(0, 0.4, 5000).astype(np.float32)
    verdict = check(_ecg(x, 500.0))
    assert verdict.codes == ["noise"] and verdict.reasons[0].leads == ("V4",)


def test_baseline_wander(x500):
    x = x500.copy()
    t = np.arange(5000) / 500.0
    x[LEADS.index("V1")] += (2.5 * np.sin(2 * np.pi * 0.25 * t)).astype(np.float32)
    verdict = check(_ecg(x, 500.0))
    assert verdict.codes == ["baseline_wander"] and verdict.reasons[0].leads == ("V1",)


def test_pacemaker_spikes(x1000):
    x = x1000.copy()
    for start in range(300, 10000, 800):  # a 2-ms, 4-mV spike before each paced beat, on every lead
        x[:, start : start + 2] += 4.0
    assert check(_ecg(x, 1000.0)).codes == ["pacemaker"]


def test_underage_by_stated_age(x500):
    verdict = check(_ecg(x500, 500.0, patient_age="012Y"))
    assert verdict.codes == ["underage"]


def test_stated_age_wins_over_birth_date(x500):
    ecg = _ecg(x500, 500.0, patient_age="040Y", patient_birth_date="20200101")
    assert check(ecg).scorable


def test_underage_by_birth_date(x500):
    ecg = _ecg(x500, 500.0, patient_age=None, patient_birth_date="20150101")
    verdict = check(ecg)
    assert verdict.codes == ["underage"] and verdict.age_years == pytest.approx(9.2, abs=0.1)


@pytest.mark.parametrize("birth", ["20990101", "18000101", "1975XX01", None])
def test_implausible_or_unknown_age_passes_with_a_note(x500, birth):
    verdict = check(_ecg(x500, 500.0, patient_age=None, patient_birth_date=birth))
    assert verdict.scorable and verdict.age_years is None
    assert any("age unknown" in n for n in verdict.notes)


def test_age_without_acquisition_date_uses_now(x500):
    ecg = _ecg(x500, 500.0, patient_age=None, patient_birth_date="20100101", acquisition_datetime=None)
    assert check(ecg, now=dt.date(2040, 1, 1)).scorable
    assert check(ecg, now=dt.date(2020, 1, 1)).codes == ["underage"]


def test_thresholds_come_from_settings(x500):
    ecg = _ecg(x500, 500.0, patient_age="012Y")
    assert check(ecg, GateSettings(min_age_years=10)).scorable
    assert check(_ecg(x500[:, :2500], 500.0), GateSettings(min_duration_s=5.0)).scorable


def test_reasons_are_json_ready_and_free_of_patient_identifiers(x500):
    x = x500.copy()
    x[0] = 0.0
    verdict = check(_ecg(x[:, :2500], 500.0, patient_age="010Y"))
    d = verdict.to_dict()
    assert not d["scorable"]
    assert {r["code"] for r in d["reasons"]} >= {"too_short", "flat_lead", "underage"}
    text = repr(d)
    assert w.TEST_IDENTIFIERS.patient_id not in text and "Testperson" not in text


def test_quality_thresholds_come_from_settings(x500):
    x = x500.copy()
    x[LEADS.index("V4")] += np.random.default_rng(0).normal(0, 0.4, 5000).astype(np.float32)
    assert check(_ecg(x, 500.0)).codes == ["noise"]
    assert check(_ecg(x, 500.0), GateSettings(noise_mv=1.0)).scorable


# -- corrupt records (issue 16, item 3): refused with coded reasons, never windowed or scored ----------


@pytest.mark.parametrize("rate", [float("inf"), 1e9, 1e-9, 99.0, 20001.0])
def test_implausible_sampling_rate_is_refused_before_any_signal_check(x500, rate):
    verdict = check(_ecg(x500, rate))
    assert verdict.codes == ["implausible_sampling_rate"]
    assert verdict.window is None


@pytest.mark.parametrize("rate", [100.0, 20000.0])
def test_the_plausible_rate_range_is_inclusive(rate):
    x = w.real_signal(rate)
    assert "implausible_sampling_rate" not in check(_ecg(x, rate)).codes


@pytest.mark.parametrize("sensitivity", [-2.5, 0.0, float("nan"), float("inf")])
def test_non_positive_channel_sensitivity_is_refused(x500, sensitivity):
    ecg = _ecg(x500, 500.0)
    ecg.channel_sensitivity = {name: 2.5 for name in LEADS} | {"V2": sensitivity}
    verdict = check(ecg)
    assert verdict.codes == ["bad_sensitivity"] and verdict.reasons[0].leads == ("V2",)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_samples_are_refused(x500, value):
    x = x500.copy()
    x[LEADS.index("V5"), 1234] = value
    verdict = check(_ecg(x, 500.0))
    assert verdict.codes == ["non_finite_samples"] and verdict.reasons[0].leads == ("V5",)


def test_a_corrupt_record_still_gets_the_age_check(x500):
    verdict = check(_ecg(x500, 1e9, patient_age="010Y"))
    assert verdict.codes == ["implausible_sampling_rate", "underage"]


def _chapter7(**replace: bytes) -> bytes:
    msg = w.write_hl7_oru_waveform(w.real_signal(500.0), 500.0)
    for old, new in replace.items():
        assert old.encode() in msg
        msg = msg.replace(old.encode(), new)
    return msg


@pytest.mark.parametrize(
    ("replace", "code"),
    [
        ({"|MA|WAV^Waveform^HL7|1|": b"|MA|WAV^Waveform^HL7|1|1e308^"}, "non_finite_samples"),
        ({"^2.5&uV^": b"^-2.5&uV^"}, "bad_sensitivity"),
        ({"^500^-32768": b"^1e9^-32768"}, "implausible_sampling_rate"),
        ({"^500^-32768": b"^1e-9^-32768"}, "implausible_sampling_rate"),
    ],
    ids=["samples-1e308", "negative-sensitivity", "rate-1e9", "rate-1e-9"],
)
def test_corrupt_hl7_chapter7_waveform_is_refused_not_scored(replace, code):
    """The adversarial run's HL7 waveforms: each passed the gate and flagged every vessel (or hung)."""
    verdict = check(decode(_chapter7(**replace)))
    assert verdict.codes[0] == code and not verdict.scorable


@pytest.mark.parametrize(
    ("sensitivity", "code"),
    [("-2.5", "bad_sensitivity"), ("1e300", "non_finite_samples")],
    ids=["negative-sensitivity", "overflowing-sensitivity"],
)
def test_corrupt_dicom_channel_sensitivity_is_refused(x500, sensitivity, code):
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(w.build_dicom_ecg(x500, 500.0, include_median=False)))
    ds.WaveformSequence[0].ChannelDefinitionSequence[3].ChannelSensitivity = sensitivity
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    verdict = check(decode(buf.getvalue()))
    assert verdict.codes[0] == code


def test_every_reason_code_has_a_report_text_that_fits_a_code_meaning():
    from ecgcad.integration.formats.gate import REASON_TEXTS, REPORT_TEXT_MAX

    for code, text in REASON_TEXTS.items():
        assert 1 <= len(text) <= REPORT_TEXT_MAX, code
        assert "\\" not in text and text.isprintable(), code
    with pytest.raises(ValueError, match="unknown gate reason"):
        GateReason("not_a_reason", "x")
