"""The compressed output formats that need more than one soundfile call: Ogg/Opus and AAC.

Both are byte-identical for the same samples, as every output format is (docs/api.md): libsndfile
gives each Ogg stream a random serial number, so the pages are rewritten with a fixed one (and
their checksums recomputed); AAC comes from FFmpeg's native encoder through PyAV, with fixed
settings and the bit-exact flag, as a raw ADTS stream (no container metadata to carry a date).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import soundfile as sf

OGG_SERIAL = 0x41434553  # any fixed value; "ACES"
AAC_BIT_RATE = 192_000  # upstream passes none (FFmpeg's default); a fixed one keeps files alike
_OGG_PAGE_HEADER = 27  # bytes before a page's segment table


# Each byte with its bits reversed: Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, initial
# value 0, no final xor; RFC 3533) is then zlib's reflected CRC-32 of the reversed bytes, reversed.
_BIT_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(data: bytes | bytearray | memoryview) -> int:
    # start 0xFFFFFFFF: zlib's internal register starts at 0; the xor undoes its final inversion.
    reflected = zlib.crc32(bytes(data).translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def fix_ogg_serial(data: bytes, serial: int = OGG_SERIAL) -> bytes:
    """The same Ogg stream with every page's serial number set to ``serial``, checksums redone.
    A stream with more than one logical bitstream is refused: ours have one."""
    out = bytearray(data)
    seen: set[int] = set()
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS" or pos + _OGG_PAGE_HEADER > len(out):
            raise ValueError(f"not an Ogg page at byte {pos}")
        segments = out[pos + 26]
        body = sum(out[pos + _OGG_PAGE_HEADER : pos + _OGG_PAGE_HEADER + segments])
        end = pos + _OGG_PAGE_HEADER + segments + body
        seen.add(struct.unpack_from("<I", out, pos + 14)[0])
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, ogg_crc(memoryview(out)[pos:end]))
        pos = end
    if len(seen) > 1:
        raise ValueError(f"the Ogg stream has {len(seen)} logical bitstreams; one was expected")
    return bytes(out)


def encode_opus(data: np.ndarray, rate: int) -> bytes:
    """[samples, channels] float32 as Ogg/Opus (libsndfile's encoder), the same bytes every time."""
    with io.BytesIO() as buffer:
        sf.write(buffer, data, rate, format="OGG", subtype="OPUS")
        return fix_ogg_serial(buffer.getvalue())


def encode_aac(data: np.ndarray, rate: int) -> bytes:
    """[samples, channels] float32 as an ADTS AAC stream (FFmpeg's native encoder via PyAV)."""
    import av  # only the AAC writer needs PyAV

    layout = "stereo" if data.shape[1] == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout, options={"flags": "+bitexact"})
        stream.bit_rate = AAC_BIT_RATE
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()
