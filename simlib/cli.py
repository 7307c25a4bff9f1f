"""The `simlib` command: argument parsing and printing only; the work is done by `simlib.Collection`.

Only light modules are imported at the top: `--help`, `simlib info` and argument errors answer without loading
torch, FAISS or scikit-learn (tests/test_cli.py runs them with torch made unimportable). Every argument is checked
before any work starts.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .config import BACKBONE_NAMES, IndexParams, SearchConfig
from .errors import CollectionError, WeightsMismatchError, WeightsUnavailableError

AUTO = "auto"
PRECISIONS = ("auto", "fp32", "bf16")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as exc:
        if not isinstance(exc, _bad_input_errors()):
            raise
        print(f"simlib: error: {exc}", file=sys.stderr)
        return 1


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input (printed, exit status 1), imported only when one is raised."""
    from .culling import CullingError
    from .errors import CollectionFileError
    from .images import ImageDecodeError

    return (CollectionError, CollectionFileError, ImageDecodeError, WeightsUnavailableError, WeightsMismatchError,
            NotADirectoryError, FileNotFoundError, CullingError, ValueError)


# ---------------------------------------------------------------- argument types: refused before any work


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _count(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _number(text: str) -> float:
    """A float that is not NaN (+inf and -inf are allowed where they mean something, e.g. a threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number, got NaN")
    return value


def _weight(text: str) -> float:
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def _stars(text: str) -> float:
    from .ratings import REJECTED

    value = _number(text)
    if not (value == REJECTED or 0 <= value <= 5):
        raise argparse.ArgumentTypeError(f"must be -1 (rejected) or within 0..5, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simlib", description="Similar-image search with star-rating fallback.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build (or add to, or sync) a collection from image folders or files")
    index.add_argument("sources", nargs="+", type=Path, metavar="DIR_OR_FILE",
                       help="folders are searched recursively")
    index.add_argument("-o", "--output", required=True, type=Path, metavar="COLLECTION", help="collection folder")
    index.add_argument("--backbone", default=AUTO, choices=[AUTO, *BACKBONE_NAMES],
                       help="auto: resnet18 when its weights are available, else efficientnet_lite0 (default)")
    index.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    index.add_argument("--precision", default=AUTO, choices=PRECISIONS,
                       help="inference precision; auto: bf16 where the CPU or GPU runs it natively and the "
                       "backbone's retrieval quality holds in it, else fp32 (default)")
    index.add_argument("--add", action="store_true", help="add to COLLECTION if it exists instead of replacing it")
    index.add_argument("--sync", action="store_true", help="bring COLLECTION in line with the folders: add new "
                       "files, remove deleted ones, extract changed ones again, read changed ratings again")
    index.add_argument("--refit", action="store_true", help="with --add: learn PCA and threshold again from all")
    index.add_argument("--root", type=Path, metavar="NEW_PATH", help="where the folder COLLECTION indexes is now")
    index.add_argument("--pca-dim", type=_positive, default=128)
    index.add_argument("--whiten", action="store_true", help="whiten the PCA vectors")
    index.add_argument("--index", default="auto", choices=["auto", "hnsw", "exact", "ivf-pq"], dest="index_kind",
                       help="auto: exact (brute force) for small collections, HNSW for large ones (default); "
                       "ivf-pq: compressed codes re-ranked exactly, for collections beyond memory")
    index.add_argument("--M", type=_positive, default=IndexParams.M, dest="M", help="HNSW graph degree")
    index.add_argument("--ef-construction", type=_positive, default=IndexParams.ef_construction)
    index.add_argument("--ef-search", type=_positive, default=IndexParams.ef_search)
    index.add_argument("--nlist", type=_positive, default=IndexParams.nlist, help="ivf-pq: inverted lists")
    index.add_argument("--pq-m", type=_positive, default=IndexParams.pq_m,
                       help="ivf-pq: code bytes per vector (must divide the PCA size)")
    index.add_argument("--nprobe", type=_positive, default=IndexParams.nprobe, help="ivf-pq: lists searched")
    index.add_argument("--refine", type=_positive, default=IndexParams.refine,
                       help="ivf-pq: shortlist of REFINE x k codes re-ranked exactly")
    index.add_argument("--rating-weight", type=_weight, default=0.0, help="0 = pure visual search (default)")
    index.add_argument("--threshold", type=_number, help="fixed match threshold instead of the calibrated one")
    index.add_argument("--score-norm", type=_share, default=0.5, metavar="WEIGHT",
                       help="weight of the neighbourhood term in the match score (default 0.5; 0 = the best "
                            "similarity alone)")
    index.add_argument("--batch-size", type=_positive,
                       help="files decoded per step (default: 8 on a CPU, 32 on a GPU)")
    index.add_argument("--workers", type=_count,
                       help="decoding processes (default: three quarters of the cores, at most 8)")
    index.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="extract features on a Ray cluster (pip install 'simlib[ray]'): ADDRESS of a running "
                            "one (HOST:PORT or ray://HOST:PORT; 'local' starts a new local one), or none for the one "
                            "in $RAY_ADDRESS or started here with 'ray start', else a new local one; a rerun after "
                            "a stop resumes from the finished shards")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=_index)

    search = commands.add_parser("search", help="find the images most similar to one or more query images")
    search.add_argument("collection", type=Path, metavar="COLLECTION")
    search.add_argument("queries", nargs="+", type=Path, metavar="QUERY",
                        help="image files, or folders of them (searched recursively); embedded in batches")
    search.add_argument("-k", type=_positive, default=10, help="number of results (default 10)")
    search.add_argument("--json", action="store_true", help="one JSON object per query and line, not tables")
    search.add_argument("--threshold", type=_number, help="match threshold (default: the collection's)")
    search.add_argument("--min-rating", type=_stars, help="only images rated at least this")
    search.add_argument("--under", type=Path, metavar="FOLDER", help="only images in this folder or below it")
    search.add_argument("--query-rating", type=_stars,
                        help="use this rating for the queries instead of their metadata")
    search.add_argument("--ef-search", type=_positive, help="HNSW search beam, or the lists an ivf-pq index "
                        "probes (default: the collection's)")
    search.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    search.set_defaults(run=_search)
    search.add_argument("--root", type=Path, metavar="NEW_PATH", help="where the folder COLLECTION indexes is now")

    remove = commands.add_parser("remove", help="remove images (files, or folders and everything under them)")
    remove.add_argument("collection", type=Path, metavar="COLLECTION")
    remove.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    remove.add_argument("--root", type=Path, metavar="NEW_PATH", help="where the folder COLLECTION indexes is now")
    remove.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    remove.set_defaults(run=_remove)

    convert = commands.add_parser("convert", help="convert a collection file of format 1 into a collection folder")
    convert.add_argument("old", type=Path, metavar="OLD")
    convert.add_argument("new", type=Path, metavar="NEW")
    convert.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    convert.set_defaults(run=_convert)

    duplicates = commands.add_parser(
        "duplicates", help="exact and near-duplicate groups, each with its keeper; move the other copies aside")
    duplicates.add_argument("collection", nargs="?", type=Path, metavar="COLLECTION")
    duplicates.add_argument("--threshold", type=_number,
                            help="near-duplicate similarity (default: the collection's calibrated threshold)")
    shape = duplicates.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shape.add_argument("--csv", action="store_true", help="print CSV, one row per image of a group")
    duplicates.add_argument("--move-to", type=Path, metavar="DIR",
                            help="move every copy that is not its group's keeper, with its XMP sidecars, into DIR "
                            "at its path relative to the collection's root (a dry run unless --apply)")
    duplicates.add_argument("--apply", action="store_true", help="with --move-to: move the files, write an undo "
                            "manifest into DIR first, and remove the moved photos from COLLECTION")
    duplicates.add_argument("--undo", type=Path, metavar="MANIFEST",
                            help="move back what --move-to --apply moved, and add the photos to the collection again")
    duplicates.add_argument("--root", type=Path, metavar="NEW_PATH", help="where the folder COLLECTION indexes is now")
    duplicates.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    duplicates.set_defaults(run=_duplicates)

    info = commands.add_parser("info", help="describe a collection")
    info.add_argument("collection", type=Path, metavar="COLLECTION")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info)
    return parser


def _existing(paths: list[Path], what: str) -> None:
    """Refuse, before any work, paths that do not exist."""
    for path in paths:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{_show(path)}: no such {what}")


# ---------------------------------------------------------------- commands


def _index(args: argparse.Namespace) -> int:
    _existing(args.sources, "file or folder")
    from . import store

    if args.add and args.sync:
        raise ValueError("--add and --sync do not go together: --sync adds new files too")
    if args.ray is not None and args.workers is not None:
        raise ValueError("--workers sets this machine's decoding processes; with --ray, Ray schedules decoding")
    if (args.add or args.sync) and args.output.exists():
        # held from loading to saving, so that a second writer waits and then sees these images
        with store.locked(args.output, on_wait=lambda message: print(f"simlib: {message}", file=sys.stderr)):
            return _update(args)
    return _build(args)


def _update(args: argparse.Namespace) -> int:
    from .collection import Collection

    collection = Collection.load(args.output, weights=args.weights, root=args.root)
    extractor = _extractor(args)
    options = dict(progress=not args.quiet, batch_size=args.batch_size, num_workers=args.workers, extractor=extractor)
    if args.sync:
        for source in args.sources:
            if not Path(source).is_dir():
                raise NotADirectoryError(f"{source}: --sync reconciles folders; this is not one")
            report = collection.sync(source, **options)
            for note in report.notes:
                print(f"note: {note}", file=sys.stderr)
            print(f"Synced {_show(source)}: {report.summary()}.")
            _print_skipped(report.skipped)
    else:
        report = collection.add(args.sources, refit=args.refit, **options)
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        _print_skipped(report.errors)
        if report.already_present:
            print(f"{report.already_present} file(s) already in the collection were left as they were.")
        print(f"Added {report.added} image(s); the collection holds {len(collection)}.")
    _save(collection, args.output, extractor=extractor)
    return 0


def _build(args: argparse.Namespace) -> int:
    from .backbones import load_backbone
    from .collection import Collection

    progress = not args.quiet
    config = SearchConfig(
        pca_dim=args.pca_dim,
        whiten=args.whiten,
        index=IndexParams(args.index_kind, args.M, args.ef_construction, args.ef_search, args.nlist, args.pq_m,
                          args.nprobe, args.refine),
        rating_weight=args.rating_weight,
        threshold=args.threshold,
        score_norm=args.score_norm,
    )
    collection = Collection(load_backbone(args.backbone, args.weights, precision=args.precision), config)
    extractor = _extractor(args)
    report = collection.add(args.sources, refit=True, progress=progress, batch_size=args.batch_size,
                            num_workers=args.workers, extractor=extractor)
    for note in collection.notes:
        print(f"note: {note}", file=sys.stderr)
    _print_skipped(report.errors)
    core, backbone = collection.core, collection.backbone
    pca = core.pca_
    reduced = "raw features" if pca is None else f"PCA {pca.n_components_}-d{' whitened' if pca.whiten else ''}"
    print(f"Indexed {report.added} image(s); the collection holds {len(collection)} "
          f"({backbone.name} {backbone.dim}-d in {backbone.precision} -> {reduced}, "
          f"{_describe_index(collection.config.index, core.index_kind)}).")
    print(f"Match threshold {collection.threshold:.3f} ({_threshold_origin(collection)}).")
    _save(collection, args.output, extractor=extractor)
    return 0


def _extractor(args: argparse.Namespace):
    """The Ray extractor `--ray` asks for, or None: extract in this process."""
    if args.ray is None:
        return None
    from .distributed import RayExtractor

    return RayExtractor(args.ray or None, batch_size=args.batch_size)


def _print_skipped(errors: list) -> None:
    if errors:
        print(f"Skipped {len(errors)} file(s):")
        for error in errors:
            print(f"  {_show(error.path)}: {error.reason}")


def _save(collection, output: Path, out=None, extractor=None) -> None:
    """Save `collection`; then the finished shards of a Ray extraction are no longer needed."""
    from .collection import COMPACT_SHARE

    compacts = collection.compaction_pays
    collection.save(output)
    if extractor is not None:
        if extractor.cluster:
            print(f"Features extracted on the Ray cluster at {extractor.cluster}.", file=out)
        if extractor.resumed:
            print(f"{extractor.resumed} image(s) came from the finished shards of an earlier run.", file=out)
        extractor.forget()
    if compacts:
        print(f"Compacted: more than {COMPACT_SHARE:.0%} of the indexed images were removed, so the index was "
              "rebuilt without them.", file=out)
    print(f"Saved {_show(output)} (root {_show(collection.root)})", file=out)


def _remove(args: argparse.Namespace) -> int:
    from . import store
    from .collection import Collection

    store.check_folder(args.collection)
    with store.locked(args.collection, on_wait=lambda message: print(f"simlib: {message}", file=sys.stderr)):
        collection = Collection.load(args.collection, weights=args.weights, root=args.root)
        report = collection.remove(args.paths)
        for path in report.not_found:
            print(f"  {_show(path)}: no image of the collection is this file or lies under this folder")
        print(f"Removed {report.removed} image(s); the collection holds {len(collection)}.")
        _save(collection, args.collection)
    return 1 if report.not_found and not report.removed else 0


def _convert(args: argparse.Namespace) -> int:
    if args.new.exists():
        raise ValueError(f"{args.new}: already exists; convert into a new folder")
    from .convert import convert_collection

    collection = convert_collection(args.old, args.new, weights=args.weights)
    print(f"Converted {_show(args.old)} (format 1) into {_show(args.new)}: {len(collection)} image(s), root "
          f"{_show(collection.root)}.")
    return 0


def _search(args: argparse.Namespace) -> int:
    _existing([args.collection], "collection")
    _existing(args.queries, "query file or folder")
    from .collection import Collection
    from .files import find_images
    from .images import FileError

    queries: list[Path] = []
    for query in args.queries:
        if query.is_dir():
            found, _ = find_images(query)
            queries.extend(found)
        else:
            queries.append(query)
    if not queries:
        raise FileNotFoundError(f"no images in {', '.join(_show(q) for q in args.queries)}")
    collection = Collection.load(args.collection, weights=args.weights, root=args.root)
    answers = collection.search_many(
        queries, k=args.k, threshold=args.threshold, min_rating=args.min_rating,
        query_rating=args.query_rating, ef_search=args.ef_search, under=args.under,
    )
    failed = 0
    for i, answer in enumerate(answers):
        if isinstance(answer, FileError):
            failed += 1
            print(f"simlib: error: {_show(answer.path)}: {answer.reason}", file=sys.stderr)
        elif args.json:
            print(json.dumps(answer.to_dict()))
        else:
            if i:
                print()
            _print_response(answer)
    return 1 if failed else 0


def _print_response(response) -> None:
    from .ratings import format_stars

    print(f"Query: {_show(response.query)}; rating: {response.query_rating.describe()}")
    print(response.message)
    rows = [("rank", "similarity", "rating", "reason", "path")]
    rows += [(str(r.rank), f"{r.similarity:.3f}", format_stars(r.rating), r.reason, _show(r.path))
             for r in response.results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                         row[3].ljust(widths[3]), row[4]]))
    if not response.results:
        print("(no results)")


def _duplicates(args: argparse.Namespace) -> int:
    if args.undo is not None:
        if args.collection is not None or args.move_to is not None or args.apply:
            raise ValueError("--undo MANIFEST takes no COLLECTION, --move-to or --apply: the manifest names them")
        return _undo(args.undo, args.weights)
    if args.collection is None:
        raise ValueError("give a COLLECTION (or --undo MANIFEST)")
    if args.apply and args.move_to is None:
        raise ValueError("--apply needs --move-to DIR")
    from . import store
    from .collection import Collection

    store.check_folder(args.collection)
    if not args.apply:
        return _report_duplicates(args, Collection.load(args.collection, weights=args.weights, root=args.root))
    with store.locked(args.collection, on_wait=lambda message: print(f"simlib: {message}", file=sys.stderr)):
        return _report_duplicates(args, Collection.load(args.collection, weights=args.weights, root=args.root))


def _report_duplicates(args: argparse.Namespace, collection) -> int:
    from .culling import PartialMoveError, apply_moves, plan_moves, write_manifest

    report = collection.duplicate_groups(args.threshold)
    plan = None if args.move_to is None else plan_moves(report, collection.root, args.move_to)
    notes = sys.stderr if args.csv or args.json else sys.stdout
    if args.json:
        payload = report.to_dict()
        if plan is not None:
            payload["moves"] = [{"from": m.source, "to": m.target, "kind": m.kind} for m in plan.moves]
            payload["applied"] = args.apply
        print(json.dumps(payload, indent=2))
    elif args.csv:
        rows = report.rows()
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["group"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_duplicates(report)
    for error in report.errors:
        print(f"left out {_show(error.path)}: {error.reason}", file=sys.stderr)
    if plan is None:
        return 0
    for sidecar, why in plan.kept_sidecars:
        print(f"kept in place: {_show(sidecar)}: {why}", file=notes)
    if not args.apply:
        for move in plan.moves:
            print(f"would move {_show(move.source)} -> {_show(move.target)}", file=notes)
        print(f"Dry run: nothing was moved. Add --apply to move {len(plan.images)} image(s) and "
              f"{len(plan.moves) - len(plan.images)} sidecar(s) into {_show(args.move_to)}.", file=notes)
        return 0
    manifest = write_manifest(plan, args.move_to, args.collection, report.threshold.value)
    try:
        moved = apply_moves(plan)
    except PartialMoveError as exc:
        collection.remove([m.source for m in exc.done if m.kind == "image"])
        _save(collection, args.collection)
        print(f"Undo what was moved with: simlib duplicates --undo {_show(manifest)}", file=sys.stderr)
        raise
    images = [m.source for m in moved if m.kind == "image"]
    collection.remove(images)
    print(f"Moved {len(images)} image(s) and {len(moved) - len(images)} sidecar(s) into {_show(args.move_to)}; "
          f"the collection holds {len(collection)}.", file=notes)
    print(f"Undo with: simlib duplicates --undo {_show(manifest)}", file=notes)
    _save(collection, args.collection, out=notes)
    return 0


def _print_duplicates(report) -> None:
    from .ratings import format_stars

    exact, near = report.of_kind("exact"), report.of_kind("near")
    print(f"Near-duplicate threshold {report.threshold.describe()}.")
    print(f"{len(exact)} exact group(s) ({sum(len(g.copies) for g in exact)} copies to move), {len(near)} near "
          f"group(s) ({sum(len(g.copies) for g in near)} copies to move).")
    for number, group in enumerate(report.groups, start=1):
        print()
        print(f"group {number}: {_group_title(group)}")
        rows = [("", "rating", "match", "pixels", "file", "path", "why")]
        for member in group.members:
            facts = member.facts
            rows.append(("keep" if member.keeper else ("tie" if member.tie else "copy"), format_stars(facts.rating),
                         f"{member.similarity:.3f}" if group.kind == "near" else member.match,
                         f"{facts.width}x{facts.height}", f"{facts.file_size / 1e3:.1f} KB", _show(facts.path),
                         member.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:6], widths)) + "  " + row[6])


def _group_title(group) -> str:
    size = f"{len(group.members)} images"
    if group.kind == "exact":
        return f"exact copies ({size}: the same file bytes or decoded pixels)"
    return f"near duplicates ({size}, each at least the threshold similar to the keeper)"


def _undo(manifest: Path, weights: Path | None) -> int:
    from . import store
    from .collection import Collection
    from .culling import undo_moves

    report = undo_moves(manifest)
    for move in report.restored:
        print(f"restored {_show(move.source)}")
    for move, why in report.failed:
        print(f"not restored {_show(move.source)}: {why}", file=sys.stderr)
    print(f"Restored {len(report.restored)} file(s) ({len(report.images)} image(s)); {len(report.in_place)} were "
          f"already in place; {len(report.failed)} could not be restored.")
    if report.images and report.collection is not None:
        if not Path(report.collection).is_dir():
            print(f"note: the collection {_show(report.collection)} is gone; the images were not added back",
                  file=sys.stderr)
        else:
            with store.locked(report.collection,
                              on_wait=lambda message: print(f"simlib: {message}", file=sys.stderr)):
                collection = Collection.load(report.collection, weights=weights)
                added = collection.add(report.images, progress=False)
                _print_skipped(added.errors)
                print(f"Added {added.added} image(s) back; the collection holds {len(collection)}.")
                _save(collection, Path(report.collection))
    return 1 if report.failed else 0


def _info(args: argparse.Namespace) -> int:
    from .manifest import read_manifest

    manifest = read_manifest(args.collection)
    config = manifest.config
    summary = {
        "collection": str(args.collection),
        "root": None if manifest.root is None else {"relative": manifest.root.relative,
                                                    "absolute": manifest.root.absolute},
        "images": manifest.images,
        "skipped_files": len(manifest.errors),
        "backbone": asdict(manifest.backbone),
        "pca": None if manifest.pca is None else {**asdict(manifest.pca), "whiten": config.whiten},
        "index": config.index.to_dict(),
        "rating_weight": config.rating_weight,
        "score_norm": config.score_norm,
        "norm_ranks": list(config.norm_ranks),
        "threshold": config.threshold if config.threshold is not None else manifest.calibration.threshold,
        "calibration": manifest.calibration.to_dict(),
        "ratings": manifest.ratings,
        "rating_conflicts": manifest.rating_conflicts,
        "created": manifest.created,
        "library_versions": manifest.library_versions,
        "notes": manifest.notes,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['collection']}: {summary['images']} images, {summary['skipped_files']} skipped, created "
          f"{summary['created']}")
    if manifest.root is not None:
        print(f"root       {manifest.root.absolute} ({manifest.root.relative} from the collection folder)")
    backbone = manifest.backbone
    print(f"backbone   {backbone.name} ({backbone.dim}-d, {backbone.precision}), weights {backbone.weights_file} "
          f"sha256 {backbone.weights_sha256[:16]}...")
    pca = manifest.pca
    if pca is None:
        print("PCA        none: the raw features are searched")
    else:
        print(f"PCA        {pca.n_components} dims{' whitened' if config.whiten else ''}, fitted on {pca.fitted_on} "
              f"images, keeps {pca.explained_variance:.1%} of the variance")
    print(f"index      {_describe_index(config.index, config.index.kind_for(manifest.images))}, "
          f"{manifest.images} images")
    print(f"threshold  {summary['threshold']:.3f} on the match score ({_describe_score(config)}); rating weight "
          f"{summary['rating_weight']}")
    print("ratings    " + ", ".join(f"{k}: {v}" for k, v in summary["ratings"].items())
          + f"; {summary['rating_conflicts']} with conflicting sources")
    versions = summary["library_versions"]
    print("versions   " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0


def _describe_index(params: IndexParams, kind: str) -> str:
    chosen = " (chosen by size)" if params.kind == "auto" else ""
    if kind == "exact":
        return f"exact index{chosen}" + (f" (ivf-pq from {params.ivf_min_vectors:,} vectors)"
                                         if params.kind == "ivf-pq" else "")
    if kind == "ivf-pq":
        return (f"IVF-PQ nlist={params.nlist} codes={params.pq_m} bytes nprobe={params.nprobe} "
                f"re-ranking {params.refine} x k{chosen}")
    return f"HNSW M={params.M} efConstruction={params.ef_construction} efSearch={params.ef_search}{chosen}"


def _describe_score(config: SearchConfig) -> str:
    if config.score_norm == 0:
        return "the best similarity"
    first, last = (rank + 1 for rank in config.norm_ranks)
    return f"best similarity - {config.score_norm:g} x mean similarity of the neighbours {first} to {last}"


def _threshold_origin(collection) -> str:
    if collection.config.threshold is not None:
        return "given"
    c = collection.core.calibration_
    return (f"calibrated on {c.n_match} edited copies: median match score {c.match_median:.3f} with the original "
            f"in the collection, {c.nonmatch_median:.3f} without it")


def _show(path) -> str:
    """A path relative to the working folder when it lies under it; bytes of a name that are not UTF-8 are shown
    escaped (\\xe9), since printing them raises on a strict UTF-8 terminal."""
    text = os.fspath(path)
    try:
        relative = os.path.relpath(text)
    except ValueError:
        relative = ".."
    shown = relative if not relative.startswith("..") else text
    return shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


if __name__ == "__main__":
    sys.exit(main())
