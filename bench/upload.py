"""How long an adapter upload that unpacks past the size limit (a zip bomb) takes to refuse.

The admin API unpacks uploads with adapters/archive.py, counting the bytes it actually
writes: a bomb is refused once the limit is written, whatever its headers claim. This
times that refusal for the default limit (adapters.max_adapter_bytes, 512 MiB) on a zip
of zeros that claims `--bomb-mb`; it was a `< 60 s` assertion in
tests/integration/service/admin/test_upload.py.

    python -m bench.upload [--limit-mb 512] [--bomb-mb 2048]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from adapters.archive import extract_archive
from ragtune.errors import InvalidInput

MIB = 1024 * 1024


def make_bomb(path: Path, claimed_bytes: int) -> None:
    """A zip whose one member is `claimed_bytes` of zeros, written without holding it."""
    zeros = b"\0" * MIB
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("adapter_model.safetensors", "w", force_zip64=True) as member,
    ):
        left = claimed_bytes
        while left > 0:
            piece = zeros[: min(left, MIB)]
            member.write(piece)
            left -= len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=int, default=512, help="the unpacked-size limit")
    parser.add_argument("--bomb-mb", type=int, default=2048, help="what the archive unpacks to")
    args = parser.parse_args()
    limit = args.limit_mb * MIB
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    try:
        bomb = work / "bomb.zip"
        make_bomb(bomb, args.bomb_mb * MIB)
        started = time.perf_counter()
        try:
            extract_archive(bomb, work / "out", max_bytes=limit)
        except InvalidInput as exc:
            seconds = time.perf_counter() - started
            print(f"refused: {exc}")
        else:
            raise SystemExit("the bomb was unpacked: the size limit did not hold")
        print(
            f"archive {bomb.stat().st_size / MIB:.1f} MiB claiming {args.bomb_mb} MiB, limit "
            f"{args.limit_mb} MiB: refused in {seconds:.2f} s "
            f"({args.limit_mb / seconds:.0f} MiB/s unpacked before the refusal)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
