"""Draw docs/architecture.png from docs/architecture.dot with Graphviz's ``dot`` (Debian: graphviz).

``python docs/architecture.py [OUT.png]``. The PNG carries the SHA-256 of the .dot text in a tEXt
chunk (``llmc-source-sha256``), so tests/test_docs.py can tell whether the checked-in picture was
drawn from the current source without comparing pixels (dot's output depends on its version and
fonts, the source's hash does not).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "architecture.dot"
PICTURE = HERE / "architecture.png"
KEY = b"llmc-source-sha256"
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def source_hash(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk; raises ValueError on anything that is not a PNG."""
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    out, pos = [], len(SIGNATURE)
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + data) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in chunk {kind!r}")
        out.append((kind, data))
        pos += 12 + length
    return out


def stamp(png: bytes, digest: str) -> bytes:
    """The PNG with a tEXt chunk ``llmc-source-sha256`` right after IHDR (replacing an older one)."""
    kept = [(k, d) for k, d in chunks(png) if not (k == b"tEXt" and d.split(b"\0", 1)[0] == KEY)]
    text = (b"tEXt", KEY + b"\0" + digest.encode())
    return SIGNATURE + b"".join(_chunk(k, d) for k, d in [kept[0], text, *kept[1:]])


def stamped_hash(png: bytes) -> str | None:
    for kind, data in chunks(png):
        if kind == b"tEXt" and data.split(b"\0", 1)[0] == KEY:
            return data.split(b"\0", 1)[1].decode()
    return None


def draw(source: Path = SOURCE, out: Path = PICTURE) -> Path:
    dot = shutil.which("dot")
    if dot is None:
        raise SystemExit("architecture.py needs Graphviz's `dot` on PATH (Debian/Ubuntu: apt-get install graphviz)")
    text = source.read_bytes()
    png = subprocess.run([dot, "-Tpng", "-Gdpi=110"], input=text, capture_output=True, check=True).stdout
    out.write_bytes(stamp(png, source_hash(text)))
    return out


if __name__ == "__main__":
    print(draw(out=Path(sys.argv[1]) if len(sys.argv) > 1 else PICTURE))
