"""The `simlib` command: argument parsing and printing only; the work is done by `simlib.Collection`.

Only light modules are imported at the top: `--help`, `simlib info` and argument errors answer without loading
torch, FAISS or scikit-learn (tests/test_cli.py runs them with torch made unimportable). Every argument is checked
before any work starts.
"""

from __future__ import annotations

import argparse
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
    from .archive import CollectionFileError
    from .images import ImageDecodeError

    return (CollectionError, CollectionFileError, ImageDecodeError, WeightsUnavailableError, WeightsMismatchError,
            NotADirectoryError, FileNotFoundError, ValueError)


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


def _stars(text: str) -> float:
    from .ratings import REJECTED

    value = _number(text)
    if not (value == REJECTED or 0 <= value <= 5):
        raise argparse.ArgumentTypeError(f"must be -1 (rejected) or within 0..5, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simlib", description="Similar-image search with star-rating fallback.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build (or add to) a collection from image folders or files")
    index.add_argument("sources", nargs="+", type=Path, metavar="DIR_OR_FILE", help="folders are searched recursively")
    index.add_argument("-o", "--output", required=True, type=Path, metavar="COLLECTION", help="collection file")
    index.add_argument("--backbone", default=AUTO, choices=[AUTO, *BACKBONE_NAMES],
                       help="auto: resnet18 when its weights are available, else efficientnet_lite0 (default)")
    index.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    index.add_argument("--precision", default=AUTO, choices=PRECISIONS,
                       help="inference precision; auto: bf16 where the CPU or GPU runs it natively and the "
                       "backbone's retrieval quality holds in it, else fp32 (default)")
    index.add_argument("--add", action="store_true", help="add to COLLECTION if it exists instead of replacing it")
    index.add_argument("--refit", action="store_true", help="with --add: learn PCA and threshold again from all")
    index.add_argument("--pca-dim", type=_positive, default=128)
    index.add_argument("--whiten", action="store_true", help="whiten the PCA vectors")
    index.add_argument("--index", default="auto", choices=["auto", "hnsw", "exact"], dest="index_kind",
                       help="auto: exact (brute force) for small collections, HNSW for large ones (default)")
    index.add_argument("--M", type=_positive, default=IndexParams.M, dest="M", help="HNSW graph degree")
    index.add_argument("--ef-construction", type=_positive, default=IndexParams.ef_construction)
    index.add_argument("--ef-search", type=_positive, default=IndexParams.ef_search)
    index.add_argument("--rating-weight", type=_weight, default=0.0, help="0 = pure visual search (default)")
    index.add_argument("--threshold", type=_number, help="fixed match threshold instead of the calibrated one")
    index.add_argument("--batch-size", type=_positive, help="files decoded per step (default: 8 on a CPU, 32 on a GPU)")
    index.add_argument("--workers", type=_count, help="decoding processes (default: three quarters of the cores, at most 8)")
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
    search.add_argument("--query-rating", type=_stars, help="use this rating for the queries instead of their metadata")
    search.add_argument("--ef-search", type=_positive, help="HNSW search beam (default: the collection's)")
    search.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    search.set_defaults(run=_search)

    info = commands.add_parser("info", help="describe a collection file")
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
    if args.output.is_dir():
        raise CollectionError(f"{args.output}: is a folder; give a file name such as photos.simlib")
    from .backbones import load_backbone
    from .collection import Collection

    progress = not args.quiet
    if args.add and args.output.exists():
        collection = Collection.load(args.output, weights=args.weights)
        report = collection.add(args.sources, refit=args.refit, progress=progress,
                                batch_size=args.batch_size, num_workers=args.workers)
        verb = "Added"
    else:
        config = SearchConfig(
            pca_dim=args.pca_dim,
            whiten=args.whiten,
            index=IndexParams(args.index_kind, args.M, args.ef_construction, args.ef_search),
            rating_weight=args.rating_weight,
            threshold=args.threshold,
        )
        collection = Collection(load_backbone(args.backbone, args.weights, precision=args.precision), config)
        report = collection.add(args.sources, refit=True, progress=progress,
                                batch_size=args.batch_size, num_workers=args.workers)
        verb = "Indexed"
    for note in collection.notes if verb == "Indexed" else report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.errors:
        print(f"Skipped {len(report.errors)} file(s):")
        for error in report.errors:
            print(f"  {_show(error.path)}: {error.reason}")
    if report.already_present:
        print(f"{report.already_present} file(s) already in the collection were left as they were.")
    core, backbone = collection.core, collection.backbone
    pca = core.pca_
    reduced = "raw features" if pca is None else f"PCA {pca.n_components_}-d{' whitened' if pca.whiten else ''}"
    print(f"{verb} {report.added} image(s); the collection holds {len(collection)} "
          f"({backbone.name} {backbone.dim}-d in {backbone.precision} -> {reduced}, "
          f"{_describe_index(collection.config.index, core.index_kind)}).")
    print(f"Match threshold {collection.threshold:.3f} ({_threshold_origin(collection)}).")
    collection.save(args.output)
    print(f"Saved {_show(args.output)}")
    return 0


def _search(args: argparse.Namespace) -> int:
    _existing([args.collection], "collection file")
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
    collection = Collection.load(args.collection, weights=args.weights)
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


def _info(args: argparse.Namespace) -> int:
    from .manifest import read_manifest

    manifest = read_manifest(args.collection)
    config = manifest.config
    summary = {
        "file": str(args.collection),
        "images": len(manifest.images),
        "skipped_files": len(manifest.errors),
        "backbone": asdict(manifest.backbone),
        "pca": None if manifest.pca is None else {**asdict(manifest.pca), "whiten": config.whiten},
        "index": config.index.to_dict(),
        "rating_weight": config.rating_weight,
        "threshold": config.threshold if config.threshold is not None else manifest.calibration.threshold,
        "calibration": manifest.calibration.to_dict(),
        "ratings": manifest.rating_counts(),
        "rating_conflicts": sum(record.rating.conflict for record in manifest.images),
        "created": manifest.created,
        "library_versions": manifest.library_versions,
        "notes": manifest.notes,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['file']}: {summary['images']} images, {summary['skipped_files']} skipped, created {summary['created']}")
    backbone = manifest.backbone
    print(f"backbone   {backbone.name} ({backbone.dim}-d, {backbone.precision}), weights {backbone.weights_file} "
          f"sha256 {backbone.weights_sha256[:16]}...")
    pca = manifest.pca
    if pca is None:
        print("PCA        none: the raw features are searched")
    else:
        print(f"PCA        {pca.n_components} dims{' whitened' if config.whiten else ''}, fitted on {pca.fitted_on} "
              f"images, keeps {pca.explained_variance:.1%} of the variance")
    print(f"index      {_describe_index(config.index, config.index.kind_for(len(manifest.images)))}, "
          f"{len(manifest.images)} vectors")
    print(f"threshold  {summary['threshold']:.3f}; rating weight {summary['rating_weight']}")
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
        return f"exact index{chosen}"
    return f"HNSW M={params.M} efConstruction={params.ef_construction} efSearch={params.ef_search}{chosen}"


def _threshold_origin(collection) -> str:
    if collection.config.threshold is not None:
        return "given"
    c = collection.core.calibration_
    return (f"calibrated on {c.n_match} edited copies: median match {c.match_median:.3f}, "
            f"median nearest non-match {c.nonmatch_median:.3f}")


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
