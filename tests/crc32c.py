"""crc32c.py - CRC-32C (Castagnoli) of bytes, as common/crc32c.c computes it:
what the tests need to forge a file whose checksum still matches, to show
that a check other than the checksum catches it."""

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
