"""Extract the ELF vmlinux from a Debian bzImage so qemu can boot it through its PVH entry.

Debian's bzImage carries the kernel as an xz stream; the decompressed payload is a plain ELF with
a PVH note, which boots about twice as fast under TCG as the bzImage through the BIOS.
Usage: extract_vmlinux.py BZIMAGE OUT
"""

from __future__ import annotations

import lzma
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"


def extract(image: bytes) -> bytes:
    start = image.find(XZ_MAGIC)
    while start >= 0:
        try:
            payload = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[start:])
        except lzma.LZMAError:
            payload = b""
        if payload.startswith(b"\x7fELF"):
            return payload
        start = image.find(XZ_MAGIC, start + 1)
    raise SystemExit("no xz-compressed ELF kernel found in the image")


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        elf = extract(f.read())
    with open(dst, "wb") as f:
        f.write(elf)


if __name__ == "__main__":
    main()
