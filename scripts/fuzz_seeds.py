"""Write the fuzz seed corpus: small valid and deliberately broken images.

``fuzz/seeds/<target>/`` gets, per format, a handful of valid files in the
modes the decoders branch on (gray, palette, alpha, 16-bit, progressive,
EXIF-rotated, lossless/lossy WebP, 8/24/32-bit BMP) and broken variants of
each: truncated, a flipped byte in the middle, and a header claiming a huge
size. The pipeline target's seeds are 12 knob bytes followed by a file.

    python scripts/fuzz_seeds.py            # rewrites fuzz/seeds/
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent / "fuzz" / "seeds"


def _picture(mode: str, size: tuple[int, int] = (13, 9)) -> Image.Image:
    img = Image.new("RGBA", size)
    img.putdata(
        [
            ((x * 37) % 256, (y * 53) % 256, (x * y * 11) % 256, (x + y) * 20 % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    return img.convert(mode)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def valid_files() -> dict[str, list[bytes]]:
    """Valid files of each format in the modes the decoders branch on."""
    rgb, rgba = _picture("RGB"), _picture("RGBA")
    png16 = Image.new("I;16", (7, 5))
    png16.putdata([i * 1500 for i in range(35)])
    return {
        "jpeg": [
            _save(rgb, "JPEG", quality=80),
            _save(rgb, "JPEG", quality=50, progressive=True),
            _save(_picture("L"), "JPEG"),
            _save(rgb, "JPEG", subsampling=0),
            _save(rgb, "JPEG", exif=_exif(6)),
            _save(_picture("CMYK"), "JPEG"),
        ],
        "png": [
            _save(rgb, "PNG"),
            _save(rgba, "PNG"),
            _save(_picture("L"), "PNG"),
            _save(_picture("LA"), "PNG"),
            _save(_picture("P"), "PNG"),
            _save(_picture("P"), "PNG", transparency=0),
            _save(png16, "PNG"),
            _save(_picture("1"), "PNG"),
        ],
        "webp": [
            _save(rgb, "WEBP", quality=70),
            _save(rgba, "WEBP", lossless=True),
            _save(rgba, "WEBP", quality=60),
            _save(rgb, "WEBP", quality=70, exif=_exif(8)),
        ],
        "bmp": [
            _save(rgb, "BMP"),
            _save(_picture("P"), "BMP"),
            _save(_picture("L"), "BMP"),
            _save(_picture("1"), "BMP"),
            _save(rgba, "BMP"),
        ],
    }


def _huge(data: bytes, fmt: str) -> bytes | None:
    """The file with its header claiming a 60000 x 60000 picture."""
    b = bytearray(data)
    if fmt == "png":
        b[16:24] = struct.pack(">II", 60000, 60000)
    elif fmt == "bmp" and len(b) >= 26:
        b[18:26] = struct.pack("<ii", 60000, 60000)
    elif fmt == "jpeg":
        sof = next(
            (i for i in range(len(b) - 9) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC2)), None
        )
        if sof is None:
            return None
        b[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    else:
        return None
    return bytes(b)


def broken_variants(data: bytes, fmt: str) -> list[bytes]:
    """Truncated, one flipped byte, and (where the header is simple) a lying size."""
    out = [data[: len(data) // 2], data[: max(12, len(data) // 8)]]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    out.append(bytes(flipped))
    huge = _huge(data, fmt)
    if huge is not None:
        out.append(huge)
    return out


def _write(folder: Path, items: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for data in items:
        (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    pipeline: list[bytes] = []
    for fmt, files in valid_files().items():
        items = [f for v in files for f in [v, *broken_variants(v, fmt)]]
        _write(ROOT / fmt, items)
        knobs = bytes([16, 24, 3, 40, 51, 1, 2, 9, 9, 9, 9, 9])
        pipeline += [knobs + f for f in files]
    _write(ROOT / "pipeline", pipeline)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(
        f"wrote {sum(1 for p in ROOT.rglob('*') if p.is_file())} seeds, {total} bytes, under {ROOT}"
    )


if __name__ == "__main__":
    main()
