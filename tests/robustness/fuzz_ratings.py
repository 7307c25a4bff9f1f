"""Coverage-guided fuzzing of the rating reader with atheris (libFuzzer), for as long as wanted; not a pytest test.

The first input byte picks the target: image bytes to `read_rating`, a packet to `xmp_values`, or an image file
plus its sidecar (split at the first 0xFF 0x00 0xFF) to `read_rating` on disk. The contract is the one the Hypothesis
suite checks: a valid `Rating`, never an exception. The rated seed files start the corpus.

    python -m tests.robustness.fuzz_ratings -max_total_time=300      # from the project root

atheris is not among simlib's dependencies (its wheels cover fewer platforms than the rest): `pip install atheris`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["simlib", "PIL", "defusedxml", "xml"]):
    from simlib.ratings import read_rating, xmp_values

from .seeds import rated_seeds  # noqa: E402
from .test_fuzz_ratings import check_rating, check_value  # noqa: E402

SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-ratings-"))


def one_input(data: bytes) -> None:
    if not data:
        return
    target, body = data[0] % 3, data[1:]
    if target == 0:
        check_rating(read_rating(body))
    elif target == 1:
        for item in xmp_values(body):
            assert isinstance(item, str) or check_value(item) is None
    else:
        image, _, sidecar = body.partition(b"\xff\x00\xff")
        (SCRATCH / "photo.jpg").write_bytes(image)
        (SCRATCH / "photo.jpg.xmp").write_bytes(sidecar)
        check_rating(read_rating(SCRATCH / "photo.jpg"))


def main() -> None:
    corpus = SCRATCH / "corpus"
    corpus.mkdir()
    for name, seed in rated_seeds().items():
        for target in range(3):
            (corpus / f"{name}-{target}").write_bytes(bytes([target]) + seed)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
