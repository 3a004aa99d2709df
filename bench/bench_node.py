"""Time one 512x512x300 study through the node on loopback, per stage, and its peak memory.

    python bench/bench_node.py [--spacing-mm 1.44] [--matrix 512] [--quiet-s 1] [--enhanced]

``--enhanced`` sends the series as one Legacy Converted Enhanced CT instance (highdicom)
instead of an instance per slice.

The node runs as its own process (`l3node serve`), as in production, so that its
peak resident memory (VmHWM) is the node's alone. Reported:

* send_s: C-STORE of all instances (modality -> node);
* last_instance_to_results_s: from the last instance acknowledged to the last result
  acknowledged by the receiving PACS, minus the quiet period (target <= 5 s);
* the node's own per-stage timings from results.json;
* node peak RSS (target <= 1.5 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from l3node.demo import SC_SOP_CLASSES, SEG_SOP_CLASS, SR_SOP_CLASSES, LocalPacs, free_port, send_folder
from l3node.phantom import main_phantom


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spacing-mm", type=float, default=1.44,
                        help="slice spacing; 1.44 mm over an abdomen-pelvis range gives about 300 slices")
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--quiet-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--enhanced", action="store_true", help="send one multi-frame Enhanced CT instance")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="l3node-bench-"))
    t0 = time.perf_counter()
    study = main_phantom("normal", args.seed, work / "study", matrix=args.matrix, slice_thickness_mm=1.5,
                         spacing_mm=args.spacing_mm, scan_range="abdomen_pelvis")
    phantom_s = time.perf_counter() - t0
    files = sorted(study.rglob("*.dcm"))
    n_slices = len(files)
    if args.enhanced:
        files = [_as_enhanced_ct(files, work / "enhanced" / "enhanced.dcm")]
    pacs = LocalPacs(work / "pacs").start()
    node_port = free_port()
    config = {
        "node": {"ae_title": "L3NODE", "bind_address": "127.0.0.1", "port": node_port,
                 "allowed_calling_aes": ["DEMOMODALITY"]},
        "storage": {"root": str(work / "var")},
        "assembly": {"quiet_period_s": args.quiet_s, "max_wait_s": 600},
        "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
        "logging": {"format": "json", "level": "WARNING"},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    node = subprocess.Popen([sys.executable, "-m", "l3node.cli", "serve", str(work / "config.yaml")],
                            stderr=open(work / "node.log", "w"))
    try:
        _wait_port(node_port)
        t_send = time.perf_counter()
        stored = send_folder(files[0].parent, node_port, "L3NODE")
        t_last = time.perf_counter()
        while True:
            classes = {str(ds.SOPClassUID) for ds in pacs.datasets()}
            if SEG_SOP_CLASS in classes and classes & SR_SOP_CLASSES and classes & SC_SOP_CLASSES:
                break
            if time.perf_counter() - t_last > 600 or node.poll() is not None:
                raise RuntimeError(f"no results; node log:\n{(work / 'node.log').read_text()[-2000:]}")
            time.sleep(0.05)
        t_done = time.perf_counter()
        peak_mb = _peak_rss_mb(node.pid)
    finally:
        node.terminate()
        node.wait(timeout=60)
        pacs.stop()
    results = json.loads(next((work / "var").rglob("results.json")).read_text())
    report = {
        "machine": f"{os.cpu_count()} CPUs",
        "study": f"{args.matrix}x{args.matrix}x{n_slices}" + (" as one Enhanced CT instance" if args.enhanced else ""),
        "phantom_generation_s": round(phantom_s, 2),
        "instances_stored": stored,
        "send_s": round(t_last - t_send, 2),
        "quiet_period_s": args.quiet_s,
        "last_instance_to_results_s": round(t_done - t_last - args.quiet_s, 2),
        "node_stage_timings_s": results.get("timings_s"),
        "node_peak_rss_mb": round(peak_mb, 1),
        "l3_status": results["l3"]["status"],
    }
    print(json.dumps(report, indent=2))
    return 0


def _as_enhanced_ct(files: list[Path], out: Path) -> Path:
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    out.parent.mkdir(parents=True)
    hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in files], series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1).save_as(out)
    return out


def _wait_port(port: int, timeout_s: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("node did not start listening")


if __name__ == "__main__":
    sys.exit(main())
