"""Senders: C-STORE SCU (one association per study batch) and STOW-RS.

Each returns one :class:`SendResult` per object, in order. A result is ``ok``
(the destination acknowledged it), or failed ``permanent`` (it will never accept
this object: refused SOP class, 4xx, a bad data set) or transient (down, busy,
timeout, 5xx: try again later). Nothing here raises for a network problem.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pydicom
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from l3node.config import DicomwebDestination, DimseDestination
from l3node.logs import get_logger
from l3node.node.outbox import OutputFile

log = get_logger(__name__)

# PS3.4 B.2.3: warnings mean the object was stored.
_WARNINGS = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendResult:
    """What a destination answered for one object."""

    ok: bool
    permanent: bool
    answer: str


def _classify_status(status: int) -> SendResult:
    text = f"0x{status:04X}"
    if status == 0x0000 or status in _WARNINGS:
        return SendResult(True, False, text)
    if 0xA700 <= status <= 0xA7FF or status in (0x0210, 0x0213):  # out of resources, duplicate invocation, resource limitation
        return SendResult(False, False, f"status {text} (transient)")
    return SendResult(False, True, f"status {text}")


def send_dimse(dest: DimseDestination, calling_ae: str, outputs: list[OutputFile], timeout_s: float = 30.0) -> list[SendResult]:
    """C-STORE every object over one association to ``dest``.

    Presentation contexts are requested per SOP class in the file's transfer
    syntax plus explicit and implicit little endian (SEG …66.4, Comprehensive SR
    …88.33, Comprehensive 3D SR …88.34, Secondary Capture …7 / …7.4: whatever the
    outputs are).
    """
    results: list[SendResult | None] = [None] * len(outputs)
    datasets: dict[int, pydicom.Dataset] = {}
    for i, out in enumerate(outputs):
        try:
            datasets[i] = pydicom.dcmread(out.path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            results[i] = SendResult(False, True, f"cannot read {out.path.name}: {exc}")
    ae = AE(ae_title=dest.calling_ae_title or calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    syntaxes: dict[str, list[str]] = {}
    for i in datasets:
        wanted = syntaxes.setdefault(outputs[i].sop_class_uid, [])
        for ts in (outputs[i].transfer_syntax_uid, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in wanted:
                wanted.append(ts)
    for sop_class, ts_list in syntaxes.items():
        ae.add_requested_context(sop_class, ts_list)
    if datasets:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            refused = {cx.abstract_syntax for cx in assoc.rejected_contexts}
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
            for i in datasets:
                if outputs[i].sop_class_uid in refused and not assoc.accepted_contexts:
                    # The peer answered but accepts none of our SOP classes: retrying will not help.
                    results[i] = SendResult(False, True, f"SOP class {outputs[i].sop_class_uid} not accepted by the destination")
                else:
                    # Rejections (e.g. our AE title not yet registered) are retried until
                    # max_attempts: an administrator can fix them without losing results.
                    results[i] = SendResult(False, False, f"association {why}")
        else:
            try:
                for i, ds in datasets.items():
                    if not assoc.is_established:
                        results[i] = SendResult(False, False, "association lost")
                        continue
                    try:
                        status = assoc.send_c_store(ds)
                    except ValueError as exc:  # no accepted context for this SOP class
                        results[i] = SendResult(False, True, f"not accepted: {exc}")
                        continue
                    if status and "Status" in status:
                        results[i] = _classify_status(int(status.Status))
                    else:
                        results[i] = SendResult(False, False, "no response (timeout or abort)")
            finally:
                if assoc.is_established:
                    assoc.release()
    return [r if r is not None else SendResult(False, False, "not sent") for r in results]


def _failed_uids(body: dict) -> dict[str, str]:
    """SOP instance UID -> failure reason from a STOW-RS response (PS3.18 10.5.3)."""
    failed = {}
    for item in (body.get("00081198") or {}).get("Value", []) or []:
        uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or ["?"])[0]
        failed[uid] = f"FailureReason {reason}"
    return failed


def send_stow(dest: DicomwebDestination, outputs: list[OutputFile]) -> list[SendResult]:
    """POST every object in one multipart/related request to ``<url>/studies``.

    200/202 -> sent, except objects listed in the FailedSOPSequence of the
    response (permanent); other 4xx -> permanent; 5xx and connection errors ->
    transient.
    """
    boundary = uuid.uuid4().hex
    parts, readable = [], []
    results: list[SendResult | None] = [None] * len(outputs)
    for i, out in enumerate(outputs):
        try:
            data = out.path.read_bytes()
        except OSError as exc:
            results[i] = SendResult(False, True, f"cannot read {out.path.name}: {exc.strerror}")
            continue
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
        readable.append(i)
    if readable:
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        auth = (dest.username, dest.password or "") if dest.username else None
        try:
            response = requests.post(dest.url.rstrip("/") + "/studies", data=body, headers=headers, auth=auth, timeout=dest.timeout_s)
        except requests.RequestException as exc:
            for i in readable:
                results[i] = SendResult(False, False, f"{type(exc).__name__}")
        else:
            code = response.status_code
            try:
                failed = _failed_uids(response.json()) if response.content else {}
            except ValueError:
                failed = {}
            for i in readable:
                uid = outputs[i].sop_instance_uid
                if code in (200, 202) and uid not in failed:
                    results[i] = SendResult(True, False, f"HTTP {code}")
                elif code in (200, 202, 409) or 400 <= code < 500:
                    results[i] = SendResult(False, True, f"HTTP {code} {failed.get(uid, '')}".strip())
                else:
                    results[i] = SendResult(False, False, f"HTTP {code}")
    return [r if r is not None else SendResult(False, False, "not sent") for r in results]
