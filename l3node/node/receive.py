"""The C-ECHO + C-STORE SCP (pynetdicom), durable before it answers.

The association thread does only this per instance: check the request (UIDs,
SOP class, a header that parses, pixel data of the announced size), write the
received bytes to the spool (temp file, fsync, atomic rename, directory fsync),
record the arrival in ``audit.db``, and answer a named PS3.4 status. It never
raises and never analyses: the worker thread does that once the study is quiet.

Access control happens at association: the calling AE title (and, optionally,
the peer address) must be allowed, else an A-ASSOCIATE-RJ is sent with the PS3.8
9.3.4 reason (calling AE title not recognised / no reason given). The called AE
title must be the node's.
"""

from __future__ import annotations

import io
import ipaddress
import struct
from enum import IntEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from l3node.config import Config, NonImagePolicy
from l3node.logs import get_logger
from l3node.node.audit import Audit
from l3node.node.select_series import CT_IMAGE_SOP_CLASSES
from l3node.node.spool import InvalidUID, Spool, check_uid

log = get_logger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    INVALID_OBJECT_INSTANCE = 0x0117  # PS3.7 C.4: SOP instance UID violates UID rules
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # Sub-codes of the "Cannot understand" range C000-CFFF, specific to this node:
    INVALID_UID = 0xC001  # study/series UID not a valid UID (e.g. path characters)
    CORRUPT_PIXEL_DATA = 0xC002  # truncated or malformed pixel data


# Every transfer syntax a CT is commonly sent in (PS3.5 A.4, A.5); decoders are
# pylibjpeg(-libjpeg, -openjpeg, -rle) and pyjpegls.
TRANSFER_SYNTAXES = (
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEGExtended12Bit,
    pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1,
    pydicom.uid.JPEGLSLossless,
    pydicom.uid.JPEGLSNearLossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEG2000,
    pydicom.uid.RLELossless,
)


class InstanceRefused(Exception):
    """An instance the SCP answers with a failure status; ``reason`` is recorded."""

    def __init__(self, status: StoreStatus, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status.name}: {reason}")


def _native_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
    return (pixels * bits + 7) // 8


def _check_encapsulated(value: bytes, frames: int) -> None:
    """Walk the items of encapsulated pixel data (PS3.5 A.4); raise on a truncated one."""
    offset, items = 0, 0
    while offset + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHL", value, offset)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise InstanceRefused(StoreStatus.CORRUPT_PIXEL_DATA, f"pixel data item {items} has tag ({group:04X},{element:04X})")
        offset += 8 + length
        if offset > len(value):
            raise InstanceRefused(StoreStatus.CORRUPT_PIXEL_DATA, f"pixel data truncated in item {items}")
        items += 1
    if items < 1 + frames:  # the basic offset table item, then >= one fragment per frame
        raise InstanceRefused(StoreStatus.CORRUPT_PIXEL_DATA, f"pixel data has {items - 1} fragments for {frames} frames")


def inspect_instance(ds: pydicom.Dataset, transfer_syntax: UID, sop_class: str, sop_uid: str) -> tuple[str, str]:
    """Check a received CT instance; return its (study UID, series UID).

    Raises
    ------
    InstanceRefused
        With the status to answer: invalid or missing UIDs, a dataset whose SOP
        class/instance differ from the request, missing image attributes,
        truncated pixel data.
    """
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")):
        # pydicom gives up silently on some damage (e.g. a truncated encapsulated
        # pixel data element) and returns an empty data set.
        raise InstanceRefused(StoreStatus.CANNOT_UNDERSTAND, "data set could not be decoded (truncated or corrupt)")
    try:
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
    except InvalidUID as exc:
        raise InstanceRefused(StoreStatus.INVALID_UID, str(exc)) from None
    if str(ds.get("SOPInstanceUID", "")) != sop_uid or str(ds.get("SOPClassUID", "")) != sop_class:
        raise InstanceRefused(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID/SOPInstanceUID of the data set differ from the request"
        )
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PixelData") if k not in ds]
    if missing:
        raise InstanceRefused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"missing {', '.join(missing)}")
    value = ds.PixelData
    if transfer_syntax.is_encapsulated:
        _check_encapsulated(value, int(ds.get("NumberOfFrames") or 1))
    else:
        expected = _native_pixel_bytes(ds)
        if len(value) < expected:
            raise InstanceRefused(StoreStatus.CORRUPT_PIXEL_DATA, f"pixel data truncated: {len(value)} of {expected} bytes")
    return study_uid, series_uid


def instance_changes(stored: Path, received: bytes) -> list[str]:
    """What a received instance (file meta + data set, as stored) changes against a stored
    copy: the keywords of the public attributes that differ, ``PixelData`` when the pixels
    do, ``unreadable`` when either cannot be read or decoded. Empty: the same instance.

    The transfer syntax may differ (a re-route through another PACS): pixels are then
    compared decoded. Private attributes, the file meta and the query/retrieve attributes
    a PACS may add in transit are not compared. Anything unreadable counts as a change, so
    that the node analyses rather than drops. Only names are returned, never values.
    """
    try:
        kept = pydicom.dcmread(stored)
        new = pydicom.dcmread(io.BytesIO(received))
        old_attributes, new_attributes = _compared_attributes(kept), _compared_attributes(new)
        changes = sorted({pydicom.datadict.keyword_for_tag(tag) or str(tag)
                          for tag in old_attributes.keys() | new_attributes.keys()
                          if old_attributes.get(tag) != new_attributes.get(tag)})
        if kept.file_meta.TransferSyntaxUID == new.file_meta.TransferSyntaxUID:
            same_pixels = kept.PixelData == new.PixelData
        else:
            same_pixels = bool(np.array_equal(kept.pixel_array, new.pixel_array))
        return changes + ([] if same_pixels else ["PixelData"])
    except Exception:  # noqa: BLE001 - unreadable either side: not known to be the same
        return ["unreadable"]


_NOT_COMPARED = {Tag(0x7FE0, 0x0010), Tag(0x0008, 0x0054), Tag(0x0008, 0x0056)}
"""Pixel Data (compared apart), Retrieve AE Title and Instance Availability (added in transit)."""


def _compared_attributes(ds: pydicom.Dataset) -> dict:
    return {element.tag: element.value for element in ds
            if not element.tag.is_private and element.tag not in _NOT_COMPARED}


class Receiver:
    """The node's SCP: ``start()`` listens in background threads, ``stop()`` closes.

    Parameters
    ----------
    config:
        ``node`` settings are used (AE title, address, port, allow-lists, policy).
    spool, audit:
        Where instances are stored and their arrival recorded.
    """

    def __init__(self, config: Config, spool: Spool, audit: Audit):
        self.config = config
        self.spool = spool
        self.audit = audit
        self.server = None
        self._networks = [ipaddress.ip_network(a, strict=False) for a in config.node.allowed_source_ips]

    def _make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.network_timeout_s
        ae.dimse_timeout = node.network_timeout_s
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for sop_class in CT_IMAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        if node.other_sop_classes == NonImagePolicy.IGNORE:
            for cx in StoragePresentationContexts:
                if cx.abstract_syntax not in CT_IMAGE_SOP_CLASSES:
                    ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        return ae

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.config.node.port

    def start(self) -> None:
        """Listen on ``node.bind_address:node.port`` (returns at once).

        Raises
        ------
        OSError
            If the address cannot be bound (port in use).
        """
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        ae = self._make_ae()
        address = (self.config.node.bind_address, self.config.node.port)
        try:
            self.server = ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc} "
                                     "(is another node or DICOM service on that port? see node.port)") from exc
        log.info("receiver_started", ae_title=self.config.node.ae_title, port=self.port)

    def stop(self) -> None:
        """Stop accepting associations and close the listening socket."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            log.info("receiver_stopped")

    # -- handlers (association threads; never raise) -----------------------------------
    def _on_requested(self, event) -> None:
        try:
            calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
            address = str(event.assoc.requestor.address)
            allowed = self.config.node.allowed_calling_aes
            if allowed and calling not in {a.strip() for a in allowed}:
                log.warning("association_refused", calling_ae=calling, peer=address, why="calling_ae_not_allowed")
                self._reject(event.assoc, 0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
                return
            if self._networks and not self._ip_allowed(address):
                log.warning("association_refused", calling_ae=calling, peer=address, why="source_ip_not_allowed")
                self._reject(event.assoc, 0x01, 0x01, 0x01)  # permanent, service user, no reason given
        except Exception as exc:  # noqa: BLE001 - a handler must never raise
            log.error("association_check_failed", error=repr(exc))
            self._reject(event.assoc, 0x02, 0x01, 0x01)

    @staticmethod
    def _reject(assoc, result: int, source: int, diagnostic: int) -> None:
        # As pynetdicom's own ACSE does: queue the A-ASSOCIATE-RJ, then kill(),
        # which waits for the DUL to send it before the socket is closed.
        assoc.acse.send_reject(result, source, diagnostic)
        assoc.kill()

    def _ip_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def _on_echo(self, event) -> int:
        log.info("echo", calling_ae=str(event.assoc.requestor.ae_title).strip())
        return StoreStatus.SUCCESS

    def _on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        peer = str(event.assoc.requestor.address)
        raw_sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            return self._store(event, calling)
        except InstanceRefused as refused:
            log.warning("instance_refused", calling_ae=calling, status=f"0x{refused.status:04X}", reason=refused.reason)
            self._record_refusal(calling, peer, raw_sop, refused.status, refused.reason)
            return refused.status
        except OSError as exc:
            log.error("instance_not_stored", calling_ae=calling, error=f"{type(exc).__name__}: {exc.strerror}")
            self._record_refusal(calling, peer, raw_sop, StoreStatus.OUT_OF_RESOURCES, f"storage error: {exc.strerror}")
            return StoreStatus.OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - a handler must never raise
            reason = f"data set could not be decoded: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("instance_refused", calling_ae=calling, status="0xC000", reason=reason)
            self._record_refusal(calling, peer, raw_sop, StoreStatus.CANNOT_UNDERSTAND, reason)
            return StoreStatus.CANNOT_UNDERSTAND

    def _record_refusal(self, calling: str, peer: str, sop: str, status: int, reason: str) -> None:
        try:
            self.audit.note_refusal(calling, peer, sop, status, reason)
        except Exception as exc:  # noqa: BLE001 - the answer matters more than the record
            log.error("refusal_not_recorded", error=repr(exc))

    def _store(self, event, calling: str) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class not in CT_IMAGE_SOP_CLASSES:
            if self.config.node.other_sop_classes == NonImagePolicy.IGNORE:
                log.info("instance_ignored", calling_ae=calling, sop_class=UID(sop_class).name)
                return StoreStatus.SUCCESS
            raise InstanceRefused(StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not accepted")
        try:
            sop_uid = check_uid(event.request.AffectedSOPInstanceUID, "AffectedSOPInstanceUID")
        except InvalidUID as exc:
            raise InstanceRefused(StoreStatus.INVALID_OBJECT_INSTANCE, str(exc)) from None
        ds = event.dataset  # decodes the header lazily; raises on garbage
        ts = UID(event.context.transfer_syntax)
        study_uid, series_uid = inspect_instance(ds, ts, sop_class, sop_uid)
        data = event.encoded_dataset(include_meta=True)
        with self.spool.lock:
            analysed = self.spool.claimed_copy(study_uid, series_uid, sop_uid)
            changes = instance_changes(analysed, data) if analysed is not None else []
            if analysed is not None and not changes:
                # A resend of an instance already analysed (a PACS retry, a re-route):
                # acknowledged and dropped, so it cannot open a one-instance round whose
                # "declined" report would confuse the PACS. New instances do open a round,
                # and so does a changed one (a slice resent after its pixels were repaired).
                log.info("instance_already_analysed", study_uid=study_uid, series_uid=series_uid, calling_ae=calling)
                return StoreStatus.SUCCESS
            if analysed is not None:
                log.info("instance_changed_since_analysed", study_uid=study_uid, series_uid=series_uid,
                         calling_ae=calling, changed=",".join(changes))
            self.spool.store_instance(study_uid, series_uid, sop_uid, data)
            ref = self.audit.note_instance(study_uid, calling)
        log.debug("instance_stored", study_uid=study_uid, series_uid=series_uid, round=ref.round, calling_ae=calling)
        return StoreStatus.SUCCESS
