"""Command line: the only place that parses arguments and exits.

    l3node demo                          node + local PACS + synthetic study, end to end
    l3node serve [config.yaml]           run the DICOM node
    l3node run DICOM_DIR --out DIR       analyse one study offline
    l3node check-config config.yaml      print the configuration in effect, or every problem
    l3node status [--config FILE]        studies and sends, by state
    l3node phantom --variant V --seed N --out DIR
    l3node train l3|seg [--phantoms-per-variant N]  train the networks (GPU when present)
    l3node evaluate l3|seg CASES...      metrics tables and plots
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

from l3node import __version__
from l3node.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    from l3node.logs import configure

    parser = _parser()
    args = parser.parse_args(argv)
    configure(json=False, level="WARNING")  # commands that read a config file reconfigure
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l3node", description="A DICOM node that measures muscle and fat at L3 on abdominal CT "
                                   "and sends SEG, SR and an overlay back to the PACS.")
    parser.add_argument("--version", action="version", version=f"l3node {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    demo = sub.add_parser("demo", help="send a synthetic study through a local node and show what comes back")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo keeps its files")
    demo.add_argument("--variant", default="normal", help="phantom variant (see `l3node phantom --list-variants`)")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run the DICOM node")
    serve.add_argument("config", type=Path, nargs="?", default=None, help="YAML configuration (default: built-in)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="analyse one study offline")
    run.add_argument("study", type=Path, help="folder of DICOM files of one study")
    run.add_argument("--out", type=Path, required=True, help="output folder (results.json + DICOM objects)")
    run.add_argument("--config", type=Path, default=None)
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", type=Path)
    check.set_defaults(func=_check_config)

    status = sub.add_parser("status", help="studies and sends by state")
    status.add_argument("--config", type=Path, default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    resend = sub.add_parser("resend", help="retry the sends that failed for good (after the destination is back)")
    resend.add_argument("--config", type=Path, default=None)
    resend.add_argument("--study", default=None, help="only this StudyInstanceUID")
    resend.add_argument("--destination", default=None, help="only sends to this destination (its name)")
    resend.set_defaults(func=_resend)

    reanalyse = sub.add_parser("reanalyse", help="analyse again the rounds whose analysis failed (after a fix), "
                                                 "or were declined (--declined)")
    reanalyse.add_argument("--config", type=Path, default=None)
    which = reanalyse.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", default=None, help="this StudyInstanceUID")
    which.add_argument("--all", action="store_true", help="every round whose analysis failed")
    reanalyse.add_argument("--declined", action="store_true",
                           help="also the rounds that were declined (after a change of selection rules, or an "
                                "upgrade that reads what was declined), while their instances are kept")
    reanalyse.set_defaults(func=_reanalyse)

    phantom = sub.add_parser("phantom", help="write a synthetic CT study with known anatomy")
    phantom.add_argument("--variant", default="normal")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--out", type=Path)
    phantom.add_argument("--list-variants", action="store_true")
    phantom.add_argument("--matrix", type=int, choices=(256, 512), default=None)
    phantom.add_argument("--slice-mm", type=float, default=None, help="slice thickness and spacing")
    phantom.add_argument("--scan-range", default=None,
                         choices=("abdomen_pelvis", "chest_abdomen_pelvis", "chest_only", "l3_edge"))
    phantom.set_defaults(func=_phantom)

    train = sub.add_parser("train", help="train the L3 network or the tissue U-Net")
    train.add_argument("task", choices=("l3", "seg"))
    train.add_argument("--out", type=Path, default=None, help="weights folder (default: weights/l3_mip or weights/tissue_unet)")
    train.add_argument("--phantoms-per-variant", type=int, default=24)
    train.add_argument("--epochs", type=int, default=None, help="default: 30 for l3, 12 for seg")
    train.add_argument("--site-data", type=Path, nargs="*", default=None,
                       help="a site's labelled cases (NIfTI + labels, or DICOM CT + SEG), added to the phantoms")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate L3 location or segmentation")
    evaluate.add_argument("what", choices=("l3", "seg"))
    evaluate.add_argument("cases", nargs="*", type=Path,
                          help="labelled cases (folders with ct.nii.gz + labels; seg: FOLDER@K-K or "
                               "phantom:<variant>:<seed>); none: phantoms")
    evaluate.add_argument("--phantoms-per-variant", type=int, default=0)
    evaluate.add_argument("--phantoms-per-class", type=int, default=0,
                          help="l3: this many phantoms of each variant class (the paper's subgroups)")
    evaluate.add_argument("--first-seed", type=int, default=0, help="first phantom seed")
    evaluate.add_argument("--workers", type=int, default=1, help="l3: processes for phantom cases")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"))
    evaluate.add_argument("--config", type=Path, default=None,
                          help="seg: segment with this file's analysis settings (HU ranges, imat_edge)")
    evaluate.set_defaults(func=_evaluate)
    return parser


def _load(path: Path | None):
    from l3node.config import load_config
    from l3node.logs import configure

    config = load_config(path)
    configure(json=config.logging.format == "json", level=config.logging.level)
    return config


def _check_config(args: argparse.Namespace) -> int:
    from l3node.config import load_config

    config = load_config(args.config)  # ConfigError -> every problem, exit 2
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from l3node.service import serve

    try:
        serve(_load(args.config))
    except OSError as exc:  # port in use, storage root not writable: say so, no traceback
        print(f"error: the node could not start: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from l3node.pipeline import analyse_study

    config = _load(args.config)
    if not args.study.is_dir():
        print(f"error: {args.study} is not a folder", file=sys.stderr)
        return 2
    outcome = analyse_study(args.study, args.out, config)
    print(json.dumps({"status": outcome.status, "reason": outcome.reason,
                      "results": str(args.out / "results.json"),
                      "outputs": [str(p) for p in outcome.output_files]}, indent=2))
    return 0 if outcome.status == "done" else 3


def _status(args: argparse.Namespace) -> int:
    from l3node.node.audit import Audit, status_summary

    db = _open_audit_db(_load(args.config))
    if db is None:
        return 2
    with closing(db):
        summary, problems = status_summary(db), Audit(db).recent_problems()
    if args.json:
        print(json.dumps({**summary, "recent_problems": problems}, indent=2, default=str))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value}")
        if problems:
            print("\nlatest failed, declined and refused (newest first):")
        for p in problems:
            print(f"  {p['when']}  {p['what']:8s}  {p['study_uid'] or '-'}  from {p['from'] or '?'}: {p['reason'][:300]}")
    return 0


def _open_audit_db(config):
    """The node's audit database, opened (close it), or None after saying it is missing."""
    from l3node.node.db import Database

    path = config.storage.root / "audit.db"
    if not path.is_file():
        print(f"error: no audit database at {path} (no node has run with storage.root "
              f"{config.storage.root}; pass the node's configuration with --config)", file=sys.stderr)
        return None
    return Database(path)


def _resend(args: argparse.Namespace) -> int:
    from l3node.node.outbox import failed_rounds, requeue_failed
    from l3node.node.spool import reopen_round

    config = _load(args.config)
    names = [d.name for d in config.destinations]
    if args.destination is not None and args.destination not in names:
        print(f"error: no destination named {args.destination!r} (configured: {', '.join(names) or 'none'})",
              file=sys.stderr)
        return 2
    db = _open_audit_db(config)
    if db is None:
        return 2
    with closing(db):
        rounds = failed_rounds(db, args.study, args.destination)
        for r in rounds:  # the spool first: a sender finishing the round moves it from work/
            reopen_round(config.storage.root, r["study_uid"], r["round"], "failed")
        requeued = requeue_failed(db, rounds, args.destination)
    for r in rounds:
        print(f"{r['study_uid']} round {r['round']}: {r['sends']} send(s) requeued")
    print(f"{requeued} send(s) of {len(rounds)} round(s) requeued; a running node sends them now, "
          "a stopped one when it starts")
    return 0


def _reanalyse(args: argparse.Namespace) -> int:
    from l3node.node.audit import Audit
    from l3node.node.spool import reopen_round

    config = _load(args.config)
    db = _open_audit_db(config)
    if db is None:
        return 2
    with closing(db):
        audit = Audit(db)
        rounds = [(r, "failed") for r in audit.failed_analyses(args.study)]
        if args.declined:
            rounds += [(r, "done") for r in audit.declined_rounds(args.study)]
        kept, gone = [], []
        for r, area in rounds:  # the spool first: the worker analyses from work/
            if reopen_round(config.storage.root, r["study_uid"], r["round"], area):
                kept.append(r)
            else:
                gone.append(r)
        reopened = audit.reopen_for_analysis([r["id"] for r in kept])
    for r in kept:
        print(f"{r['study_uid']} round {r['round']} (was: {r['reason'][:200]})")
    for r in gone:
        print(f"{r['study_uid']} round {r['round']}: its instances are no longer kept "
              "(storage.keep_done_studies_days); have the PACS send the study again")
    print(f"{reopened} round(s) to analyse again; a running node starts now, a stopped one when it starts"
          + ("" if rounds or args.all else " (failed sends are retried with `l3node resend`)"))
    return 0


def _phantom(args: argparse.Namespace) -> int:
    from l3node.phantom import VARIANTS, main_phantom

    if args.list_variants:
        print("\n".join(VARIANTS))
        return 0
    if args.out is None:
        print("error: --out is required", file=sys.stderr)
        return 2
    if args.variant not in VARIANTS:
        print(f"error: unknown variant {args.variant!r}; one of: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    options = {}
    if args.matrix:
        options["matrix"] = args.matrix
    if args.slice_mm:
        options["slice_thickness_mm"] = args.slice_mm
    if args.scan_range:
        options["scan_range"] = args.scan_range
    path = main_phantom(args.variant, args.seed, args.out, **options)
    print(path)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from l3node.logs import configure

    configure(json=False, level="INFO")  # one progress line per case on stderr: runs last up to an hour
    if args.what == "l3":
        from l3node.train.evaluate_l3 import main_evaluate_l3

        return main_evaluate_l3(args.cases, args.out, phantoms_per_variant=args.phantoms_per_variant,
                                phantoms_per_class=args.phantoms_per_class, first_seed=args.first_seed,
                                workers=args.workers)
    from l3node.config import load_config
    from l3node.train.evaluate_seg import main_evaluate_seg

    analysis = load_config(args.config).analysis  # ConfigError -> every problem, exit 2
    return int(main_evaluate_seg(args.cases, args.out, phantoms_per_variant=args.phantoms_per_variant,
                                 first_seed=args.first_seed, config=analysis) or 0)


def _train(args: argparse.Namespace) -> int:
    from l3node.analysis.neural import WEIGHTS_DIR
    from l3node.train.train_cli import main_train

    out = args.out or WEIGHTS_DIR / ("l3_mip" if args.task == "l3" else "tissue_unet")
    epochs = args.epochs or (30 if args.task == "l3" else 12)
    folder = main_train(args.task, out, phantoms_per_variant=args.phantoms_per_variant, epochs=epochs,
                        site_data=args.site_data, device=args.device)
    print(folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from l3node.demo import run_demo

    return run_demo(args.out, variant=args.variant, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
