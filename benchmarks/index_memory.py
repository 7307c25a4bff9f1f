"""Peak memory of indexing N photos with the `simlib index` command.

Generates N synthetic but photo-like JPEGs (cached: textured gradients and shapes, camera-style EXIF with all eight
orientations, every third one rated in an XMP sidecar), then indexes them with the CLI under `/usr/bin/time -v`
and prints the peak resident set size of the largest process (GNU time) and the peak proportional set size (PSS)
of the whole process tree, decoding workers included, sampled every 0.2 s from /proc.

Standalone (not part of `python -m benchmarks`):

    python benchmarks/index_memory.py -n 20000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "index-memory"


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like picture: smooth lighting and soft-edged shapes (drawn at a quarter of the size, then scaled up)
    with sensor-like noise, so it compresses like a photograph rather than like flat artwork."""
    rng = np.random.default_rng(seed)
    w, h = max(1, size[0] // 4), max(1, size[1] // 4)
    light = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(light, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.uniform(-w / 4, w), rng.uniform(-h / 4, h)
        x1, y1 = x0 + rng.uniform(w / 20, w / 2), y0 + rng.uniform(h / 20, h / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=1)).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-5, 6, (size[1], size[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8), "RGB")


def _make(job: tuple[Path, int, tuple[int, int]]) -> None:
    path, seed, size = job
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "simlib", "synthetic camera"  # Make, Model
    exif[0x0112] = 1 + seed % 8  # every orientation occurs
    temporary = path.with_name(f".{path.name}.tmp")
    photo(seed, size).save(temporary, "JPEG", quality=90, exif=exif)
    os.replace(temporary, path)
    if seed % 3 == 0:
        stars = seed % 6
        path.with_name(path.name + ".xmp").write_text(
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{stars}"/></rdf:RDF></x:xmpmeta>'
        )


def generate(folder: Path, count: int, size: tuple[int, int], jobs: int) -> Path:
    """`count` photos in `folder` (kept between runs; only missing ones are made), 1,000 per subfolder."""
    todo = []
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"photo-{i:06d}.jpg"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append((path, i, size))
    if todo:
        print(f"generating {len(todo)} JPEGs of {size[0]}x{size[1]} in {folder} ...", file=sys.stderr)
        with multiprocessing.Pool(jobs) as pool:
            for done, _ in enumerate(pool.imap_unordered(_make, todo, chunksize=16), start=1):
                if done % 1000 == 0:
                    print(f"  {done}/{len(todo)}", file=sys.stderr)
    return folder


def _tree_pss_kib(root: int) -> int:
    """Sum of PSS over `root` and its descendants (KiB); processes that end while being read are skipped."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                total += int(re.search(r"^Pss:\s+(\d+) kB", handle.read(), re.M).group(1))
        except (OSError, AttributeError):
            continue
    return total


def measure(command: list[str]) -> dict:
    """Run `command` under /usr/bin/time -v, sampling the process tree's PSS; GNU time's report parsed."""
    process = subprocess.Popen(["/usr/bin/time", "-v", *command], stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):
            peak = max(peak, _tree_pss_kib(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, report = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"indexing failed ({process.returncode}):\n{report[-3000:]}")
    return {
        "max_rss_mib": int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1)) / 1024,
        "tree_pss_mib": peak / 1024,
        "wall": re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", report).group(1),
        "report": report,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=2000, help="number of photos (default 2000)")
    parser.add_argument("--size", default="1600x1200", help="photo size WxH (default 1600x1200)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the photos are kept")
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--workers", type=int, help="decoding processes for simlib index (default: its own)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating photos")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    folder = generate(args.cache / f"{size[0]}x{size[1]}-n{args.count}", args.count, size, args.jobs)
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "photos.simlib"
        command = [sys.executable, "-m", "simlib", "index", str(folder), "-o", str(output), "-q",
                   "--backbone", args.backbone]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        print("$ /usr/bin/time -v " + " ".join(command), file=sys.stderr)
        result = measure(command)
        collection_mib = output.stat().st_size / 2**20
    print(result["report"], file=sys.stderr)
    print(f"photos {args.count} of {size[0]}x{size[1]}, backbone {args.backbone}: "
          f"peak RSS of the largest process {result['max_rss_mib']:.0f} MiB (GNU time), "
          f"peak PSS of the process tree {result['tree_pss_mib']:.0f} MiB, wall {result['wall']}, "
          f"collection file {collection_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
