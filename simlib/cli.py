"""The `simlib` command: argument parsing and printing only; the work is done by `simlib.Collection`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from . import archive
from .backbones import AUTO, BACKBONES, WeightsMismatchError, WeightsUnavailableError, load_backbone
from .collection import Collection, CollectionError, SearchResponse
from .images import ImageDecodeError
from .index import IndexParams
from .manifest import read_manifest
from .ratings import format_stars
from .search_core import SearchConfig


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (
        CollectionError,
        archive.CollectionFileError,
        ImageDecodeError,
        WeightsUnavailableError,
        WeightsMismatchError,
        NotADirectoryError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"simlib: error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simlib", description="Similar-image search with star-rating fallback.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="build (or add to) a collection from image folders or files")
    index.add_argument("sources", nargs="+", metavar="DIR_OR_FILE", help="folders are searched recursively")
    index.add_argument("-o", "--output", required=True, type=Path, metavar="COLLECTION", help="collection file")
    index.add_argument("--backbone", default=AUTO, choices=[AUTO, *BACKBONES],
                       help="auto: resnet18 when its weights are available, else efficientnet_lite0 (default)")
    index.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    index.add_argument("--add", action="store_true", help="add to COLLECTION if it exists instead of replacing it")
    index.add_argument("--refit", action="store_true", help="with --add: learn PCA and threshold again from all")
    index.add_argument("--pca-dim", type=int, default=128)
    index.add_argument("--whiten", action="store_true", help="whiten the PCA vectors")
    index.add_argument("--exact", action="store_true", help="exact (brute-force) index instead of HNSW")
    index.add_argument("--M", type=int, default=IndexParams.M, dest="M", help="HNSW graph degree")
    index.add_argument("--ef-construction", type=int, default=IndexParams.ef_construction)
    index.add_argument("--ef-search", type=int, default=IndexParams.ef_search)
    index.add_argument("--rating-weight", type=float, default=0.0, help="0 = pure visual search (default)")
    index.add_argument("--threshold", type=float, help="fixed match threshold instead of the calibrated one")
    index.add_argument("--score-norm", type=float, default=SearchConfig.score_norm, metavar="WEIGHT",
                       help="weight of the neighbourhood term in the match score (default 0.5; 0 = the best "
                            "similarity alone)")
    index.add_argument("--batch-size", type=int, help="files decoded per step (default: 8 on a CPU, 32 on a GPU)")
    index.add_argument("--workers", type=int, help="decoding processes (default: cores - 1, at most 4)")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=_index)

    search = commands.add_parser("search", help="find the images most similar to a query image")
    search.add_argument("collection", type=Path, metavar="COLLECTION")
    search.add_argument("query", type=Path, metavar="QUERY")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--threshold", type=float, help="match threshold (default: the collection's)")
    search.add_argument("--min-rating", type=float, help="only images rated at least this")
    search.add_argument("--under", type=Path, metavar="FOLDER", help="only images in this folder or below it")
    search.add_argument("--query-rating", type=float, help="use this rating for the query instead of its metadata")
    search.add_argument("--ef-search", type=int, help="HNSW search beam (default: the collection's)")
    search.add_argument("--weights", type=Path, metavar="FILE", help="local weights file for the backbone")
    search.set_defaults(run=_search)

    info = commands.add_parser("info", help="describe a collection file")
    info.add_argument("collection", type=Path, metavar="COLLECTION")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info)
    return parser


def _index(args: argparse.Namespace) -> int:
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
            index=IndexParams("exact" if args.exact else "hnsw", args.M, args.ef_construction, args.ef_search),
            rating_weight=args.rating_weight,
            threshold=args.threshold,
            score_norm=args.score_norm,
        )
        collection = Collection(load_backbone(args.backbone, args.weights), config)
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
    pca = collection.core.pca_
    reduced = "raw features" if pca is None else f"PCA {pca.n_components_}-d{' whitened' if pca.whiten else ''}"
    print(f"{verb} {report.added} image(s); the collection holds {len(collection)} "
          f"({collection.backbone.name} {collection.backbone.dim}-d -> {reduced}, "
          f"{_describe_index(collection.config.index)}).")
    print(f"Match threshold {collection.threshold:.3f} ({_threshold_origin(collection)}).")
    collection.save(args.output)
    print(f"Saved {_show(args.output)}")
    return 0


def _search(args: argparse.Namespace) -> int:
    collection = Collection.load(args.collection, weights=args.weights)
    response = collection.search(
        args.query, k=args.k, threshold=args.threshold, min_rating=args.min_rating,
        query_rating=args.query_rating, ef_search=args.ef_search, under=args.under,
    )
    if args.json:
        print(json.dumps(response.to_dict(), indent=2))
    else:
        _print_response(response)
    return 0


def _print_response(response: SearchResponse) -> None:
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
        "score_norm": config.score_norm,
        "norm_ranks": list(config.norm_ranks),
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
    print(f"backbone   {backbone.name} ({backbone.dim}-d), weights {backbone.weights_file} "
          f"sha256 {backbone.weights_sha256[:16]}...")
    pca = manifest.pca
    if pca is None:
        print("PCA        none: the raw features are searched")
    else:
        print(f"PCA        {pca.n_components} dims{' whitened' if config.whiten else ''}, fitted on {pca.fitted_on} "
              f"images, keeps {pca.explained_variance:.1%} of the variance")
    print(f"index      {_describe_index(config.index)}, {len(manifest.images)} vectors")
    print(f"threshold  {summary['threshold']:.3f} on the match score ({_describe_score(config)}); rating weight "
          f"{summary['rating_weight']}")
    print("ratings    " + ", ".join(f"{k}: {v}" for k, v in summary["ratings"].items())
          + f"; {summary['rating_conflicts']} with conflicting sources")
    versions = summary["library_versions"]
    print("versions   " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0


def _describe_index(params: IndexParams) -> str:
    if params.kind == "exact":
        return "exact index"
    return f"HNSW M={params.M} efConstruction={params.ef_construction} efSearch={params.ef_search}"


def _describe_score(config: SearchConfig) -> str:
    if config.score_norm == 0:
        return "the best similarity"
    first, last = (rank + 1 for rank in config.norm_ranks)
    return f"best similarity - {config.score_norm:g} x mean similarity of the neighbours {first} to {last}"


def _threshold_origin(collection: Collection) -> str:
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
