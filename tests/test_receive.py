"""The C-STORE SCP: a real pynetdicom server on a free port, real SCU associations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ComprehensiveSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.pixels import apply_modality_lut
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from l3node.node.audit import Audit
from l3node.node.db import Database
from l3node.node.receive import Receiver, StoreStatus
from l3node.node.spool import Spool
from tests.node_helpers import SHARED_DATA, free_port, make_config, make_ct, make_series, store


@pytest.fixture
def scp(tmp_path):
    """Start a receiver with the given node settings; yields a factory."""
    started = []

    def start(**node) -> tuple[Receiver, Spool, Audit]:
        config = make_config(tmp_path / "var", free_port(), node=node)
        spool = Spool(config.storage.root)
        audit = Audit(Database(config.storage.root / "audit.db"))
        receiver = Receiver(config, spool, audit)
        receiver.start()
        started.append(receiver)
        return receiver, spool, audit

    yield start
    for receiver in started:
        receiver.stop()


def _stored(spool: Spool) -> list[Path]:
    return sorted((spool.root / "incoming").glob("*/*/*.dcm"))


def test_echo(scp):
    receiver, _, _ = scp()
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="L3NODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def _compressible(ts) -> bool:
    try:
        make_ct("1.2.3", "1.2.3.4", 0).compress(ts)
    except Exception:  # noqa: BLE001 - encoder plugin missing
        return False
    return True


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]
)
def test_store_transfer_syntaxes_decode_after_spooling(scp, ts):
    receiver, spool, audit = scp()
    series = make_series(generate_uid(), 3)
    arrays = [ds.pixel_array.copy() for ds in series]
    for ds in series:
        if ts.is_compressed:
            if not _compressible(ts):
                pytest.skip(f"no encoder for {ts.name} here")
            ds.compress(ts, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = ts
    originals = {ds.SOPInstanceUID: array for ds, array in zip(series, arrays)}
    assert store(receiver.port, series) == [StoreStatus.SUCCESS] * 3
    files = _stored(spool)
    assert len(files) == 3
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ts
        np.testing.assert_array_equal(ds.pixel_array, originals[ds.SOPInstanceUID])
    (record,) = audit.studies()
    assert record["state"] == "receiving" and record["instances_received"] == 3 and record["calling_ae"] == "PACS"


def test_real_jpeg2000_ct_passes_and_decodes(scp, monkeypatch):
    folder = SHARED_DATA / "ts_example_ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"real CT DICOM not found at {folder}")
    receiver, spool, audit = scp()
    paths = sorted(folder.glob("*.dcm"))
    # As distributed (anonymised), the files have EMPTY SOPClassUID, SOPInstanceUID, Study
    # and Series UIDs: sent byte for byte, the node must refuse them with a reason.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assert store(receiver.port, paths[:1], contexts=[(CTImageStorage, [JPEG2000Lossless])]) == [StoreStatus.INVALID_UID]
    assert "StudyInstanceUID missing" in audit.db.query("SELECT reason FROM refusals")[0]["reason"]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    # With the UIDs a PACS would hold (from the file meta, one study, one series): stored.
    study, series = generate_uid(), generate_uid()
    datasets = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        datasets.append(ds)
    assert store(receiver.port, datasets) == [StoreStatus.SUCCESS] * len(datasets)
    files = _stored(spool)
    assert len(files) == len(datasets) == 20
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert ds.pixel_array.shape == (512, 512)
        assert (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).min() < -500  # air in HU


def test_unknown_calling_ae_is_rejected_at_association(scp):
    receiver, spool, _ = scp(allowed_calling_aes=["PACS"])
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="L3NODE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)  # calling AE not recognised
    assert store(receiver.port, make_series(generate_uid(), 1), calling_ae="PACS") == [0]
    assert len(_stored(spool)) == 1


def test_source_ip_not_allowed_is_rejected(scp):
    receiver, _, _ = scp(allowed_source_ips=["10.0.0.0/8"])
    with pytest.raises(ConnectionError, match="rejected"):
        store(receiver.port, make_series(generate_uid(), 1))


def test_wrong_called_ae_is_rejected(scp):
    receiver, _, _ = scp()
    with pytest.raises(ConnectionError, match="rejected"):
        store(receiver.port, make_series(generate_uid(), 1), called_ae="SOMEONE")


def _sr() -> pydicom.Dataset:
    ds = make_ct(generate_uid(), generate_uid(), 0)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.Modality = "SR"
    return ds


def test_other_sop_class_refused(scp):
    receiver, spool, _ = scp(other_sop_classes="refuse")
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="L3NODE")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [ComprehensiveSRStorage]
    with pytest.raises(ValueError):
        assoc.send_c_store(_sr())
    assert assoc.send_c_store(make_ct(generate_uid(), generate_uid(), 0)).Status == 0
    assoc.release()
    assert len(_stored(spool)) == 1


def test_other_sop_class_ignored(scp):
    receiver, spool, audit = scp(other_sop_classes="ignore")
    assert store(receiver.port, [_sr()]) == [StoreStatus.SUCCESS]
    assert _stored(spool) == [] and audit.studies() == []


@pytest.mark.parametrize(
    "attr, value",
    [("StudyInstanceUID", "../../etc"), ("SeriesInstanceUID", "1.2/3"), ("SeriesInstanceUID", "1." + "2" * 200)],
)
def test_bad_uid_never_becomes_a_path(scp, attr, value):
    receiver, spool, audit = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    setattr(ds, attr, value)
    assert store(receiver.port, [ds]) == [StoreStatus.INVALID_UID]
    assert list(spool.root.rglob("*.dcm")) == []
    assert not (spool.root.parent / "etc").exists()
    (refusal,) = audit.db.query("SELECT * FROM refusals")
    assert attr in refusal["reason"] and refusal["status"] == StoreStatus.INVALID_UID


def test_bad_sop_instance_uid_refused(scp):
    receiver, spool, _ = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.abc/../x"
    assert store(receiver.port, [ds]) == [StoreStatus.INVALID_OBJECT_INSTANCE]
    assert list(spool.root.rglob("*.dcm")) == []


def test_truncated_and_corrupt_datasets_fail_and_node_keeps_serving(scp, tmp_path, monkeypatch):
    receiver, spool, audit = scp()
    study = generate_uid()
    native = make_ct(study, generate_uid(), 0)
    native.PixelData = native.PixelData[: len(native.PixelData) // 2]
    j2k = make_ct(study, generate_uid(), 1)
    if not _compressible(JPEG2000Lossless):
        pytest.skip("no JPEG 2000 encoder")
    j2k.compress(JPEG2000Lossless, generate_instance_uid=False)
    full = tmp_path / "j2k.dcm"
    j2k.save_as(full, enforce_file_format=True)
    truncated = tmp_path / "j2k_truncated.dcm"
    truncated.write_bytes(full.read_bytes()[:-300])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(full.read_bytes()[:400] + bytes(range(256)) * 8)
    assert store(receiver.port, [native]) == [StoreStatus.CORRUPT_PIXEL_DATA]
    # Send the damaged files' bytes as they are (no re-encoding by the SCU).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    contexts = [(CTImageStorage, [JPEG2000Lossless])]
    statuses = store(receiver.port, [truncated, garbage], contexts=contexts)
    # pydicom returns an empty data set for this damage, or a short last fragment: both refused.
    assert statuses[0] in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CORRUPT_PIXEL_DATA)
    assert statuses[1] is not None and statuses[1] >= 0xA700  # a failure status, whichever the damage gives
    assert list(spool.root.rglob("*.dcm")) == []
    reasons = [r["reason"] for r in audit.db.query("SELECT reason FROM refusals ORDER BY id")]
    assert len(reasons) == 3 and reasons[0].startswith("pixel data truncated")
    assert store(receiver.port, [full], contexts=contexts) == [StoreStatus.SUCCESS]
    assert len(_stored(spool)) == 1


def test_duplicate_instance_overwrites_idempotently(scp):
    receiver, spool, audit = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    assert store(receiver.port, [ds, ds]) == [0, 0]
    assert len(_stored(spool)) == 1
    assert list((spool.root / "tmp").iterdir()) == []
    (record,) = audit.studies()
    assert record["instances_received"] == 2  # arrivals, not distinct instances


def test_encapsulated_pixel_data_cut_inside_a_fragment_is_refused():
    from l3node.node.receive import InstanceRefused, inspect_instance

    ds = make_ct(generate_uid(), generate_uid(), 0)
    if not _compressible(RLELossless):
        pytest.skip("no RLE encoder")
    ds.compress(RLELossless, generate_instance_uid=False)
    ts = ds.file_meta.TransferSyntaxUID
    assert inspect_instance(ds, ts, CTImageStorage, ds.SOPInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    ds.PixelData = ds.PixelData[:-100]
    with pytest.raises(InstanceRefused, match="truncated in item") as refused:
        inspect_instance(ds, ts, CTImageStorage, ds.SOPInstanceUID)
    assert refused.value.status == StoreStatus.CORRUPT_PIXEL_DATA


def test_enhanced_ct_multiframe_stored(scp):
    from pydicom.uid import EnhancedCTImageStorage

    receiver, spool, _ = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    assert store(receiver.port, [ds]) == [StoreStatus.SUCCESS]
    (path,) = _stored(spool)
    assert pydicom.dcmread(path).pixel_array.shape == (2, 64, 64)
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # one frame's worth for two frames
    assert store(receiver.port, [ds]) == [StoreStatus.CORRUPT_PIXEL_DATA]


def _jpeg_baseline(ds: pydicom.Dataset) -> np.ndarray:
    """Re-encode a slice as 8-bit JPEG baseline with Pillow (pydicom has no JPEG encoder)."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    image = ((ds.pixel_array.astype(np.int32) + 1000) // 8).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    return image


@pytest.mark.parametrize("kind", ["jpeg_baseline", "jpegls_near_lossless", "jpeg2000_lossy"])
def test_store_lossy_transfer_syntaxes_decode_after_spooling(scp, kind):
    receiver, spool, _ = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    original = ds.pixel_array.astype(np.int32)
    try:
        if kind == "jpeg_baseline":
            original, tolerance = _jpeg_baseline(ds).astype(np.int32), 30
        elif kind == "jpegls_near_lossless":
            ds.compress(pydicom.uid.JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
            tolerance = 3  # the near-lossless bound itself
        else:
            ds.compress(pydicom.uid.JPEG2000, j2k_cr=[5], generate_instance_uid=False)
            tolerance = None
    except Exception as exc:  # noqa: BLE001 - encoder plugin missing here
        pytest.skip(f"cannot encode {kind}: {exc}")
    ts = ds.file_meta.TransferSyntaxUID
    assert store(receiver.port, [ds]) == [StoreStatus.SUCCESS]
    (path,) = _stored(spool)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == ts
    decoded = stored.pixel_array.astype(np.int32)
    assert decoded.shape == (64, 64)
    if tolerance is not None:
        assert np.abs(decoded - original).max() <= tolerance
    else:
        assert np.corrcoef(decoded.ravel(), original.ravel())[0, 1] > 0.5


DCMCJPEG = shutil.which("dcmcjpeg")


@pytest.mark.skipif(DCMCJPEG is None, reason="dcmcjpeg not installed (apt-get install dcmtk)")
@pytest.mark.parametrize(
    ("flag", "ts", "lossless"),
    [
        ("+e1", pydicom.uid.JPEGLosslessSV1, True),  # process 14, selection value 1
        ("+el", pydicom.uid.JPEGLossless, True),  # process 14, any selection value
        ("+ee", pydicom.uid.JPEGExtended12Bit, False),  # process 2 & 4, 12 bit
    ],
    ids=["jpeg_lossless_sv1", "jpeg_lossless", "jpeg_extended"],
)
def test_store_dcmtk_jpeg_transfer_syntaxes_decode_after_spooling(scp, tmp_path, flag, ts, lossless):
    """JPEG processes pydicom cannot encode, encoded by DCMTK as a modality would."""
    receiver, spool, _ = scp()
    ds = make_ct(generate_uid(), generate_uid(), 0)
    # Values a 12-bit CT holds: stored 0..4095 with a rescale intercept.
    pixels = (np.asarray(ds.pixel_array, np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 0, 12, 11, -1024
    ds.PixelData = pixels.tobytes()
    plain, encoded = tmp_path / "plain.dcm", tmp_path / "encoded.dcm"
    ds.save_as(plain, enforce_file_format=True)
    subprocess.run([DCMCJPEG, flag, str(plain), str(encoded)], check=True, capture_output=True)
    jpeg = pydicom.dcmread(encoded)
    assert jpeg.file_meta.TransferSyntaxUID == ts
    assert store(receiver.port, [jpeg]) == [StoreStatus.SUCCESS]
    (path,) = _stored(spool)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == ts
    # Compare in HU: DCMTK's lossy coder may re-map stored values and the rescale with them.
    decoded_hu = apply_modality_lut(stored.pixel_array, stored).astype(np.float64)
    original_hu = pixels.astype(np.float64) - 1024
    if lossless:
        np.testing.assert_array_equal(stored.pixel_array, pixels)
    else:
        assert np.abs(decoded_hu - original_hu).mean() < 40


def test_instance_changes_compare_content_not_encoding(tmp_path):
    """A resend is "the same" when its public attributes and pixels are, whatever the
    transfer syntax, private attributes or attributes a PACS adds in transit; otherwise the
    changes are named (keywords only, never values)."""
    import copy
    import io

    from l3node.node.receive import instance_changes

    def encoded(ds) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    original = make_ct(generate_uid(), generate_uid(), 0)
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(encoded(original))
    assert instance_changes(stored, encoded(original)) == []

    recoded = copy.deepcopy(original)
    recoded.compress(RLELossless, generate_instance_uid=False)
    recoded.private_block(0x0009, "SOME PACS", create=True).add_new(0x10, "LO", "a PACS's own tag")
    recoded.RetrieveAETitle = "ARCHIVE"
    recoded.InstanceAvailability = "ONLINE"
    assert instance_changes(stored, encoded(recoded)) == []

    taller = copy.deepcopy(original)
    taller.PatientSize = 1.8
    taller.PatientName = "Other^Name"
    assert instance_changes(stored, encoded(taller)) == ["PatientName", "PatientSize"]

    repaired = copy.deepcopy(original)
    pixels = repaired.pixel_array.copy()
    pixels[10, 10] += 1
    repaired.PixelData = pixels.tobytes()
    assert instance_changes(stored, encoded(repaired)) == ["PixelData"]
    assert instance_changes(stored, b"not DICOM") == ["unreadable"]
