"""How inputs and results are packed in Redis: compactly, since a job's items are what fills it.

Inputs are stored a block of :data:`BLOCK` items at a time, as one field of their input chunk:
the block's elements as compact JSON lines, zlib-compressed and base64-encoded (the store speaks
text). A block compresses several times better than its items one by one, as profiles repeat
their keys and most of their values; a message's items are consecutive, so a message reads one
block, or two. Beside it, the first digest of each item's identifier locks (one line per item),
for the leader's reaper, which tells from that lock whether a lapsed item had started
(worker/store/lua/reap_leases.lua); the worker computes an item's lock keys from its element.

A result is stored per item (its index is how results are listed and counted), as compact JSON
compressed with a dictionary of what results have in common; small results stay plain JSON.
Items stored by an earlier version (one JSON field per item, results as JSON) read as before.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

#: Items per packed input block (a divisor of keys.CHUNK, so a block never spans two chunks).
BLOCK = 50
#: A packed result starts with this, which no JSON document does.
PACKED = "~"
_NO_DIGEST = "-"


def block_of(index: int) -> int:
    return index // BLOCK


def elements_field(block: int) -> str:
    """The field of an input chunk holding block ``block``'s elements, packed."""
    return f"z:{block}"


def digests_field(block: int) -> str:
    """The field of an input chunk holding the first lock digest of each item of block ``block``."""
    return f"f:{block}"


def first_digest(index: int, own: str | None, digests: str | None) -> str | None:
    """The first lock digest of item ``index``, from its own ``k:<index>`` field (stored so by an
    earlier version) or else its line of its block's :func:`digests_field`; None: it has no lock."""
    if own is not None:
        digests_of_own = own.split()
        return digests_of_own[0] if digests_of_own else None
    if digests is None:
        return None
    lines = digests.split("\n")
    line = index - block_of(index) * BLOCK
    return lines[line] if line < len(lines) and lines[line] != _NO_DIGEST else None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def pack_elements(lines: list[str]) -> str:
    """A block's elements (compact JSON, one per item, in index order), packed."""
    return base64.b64encode(zlib.compress("\n".join(lines).encode(), 6)).decode("ascii")


def unpack_elements(packed: str) -> list[str]:
    """The JSON of each element of a packed block, in index order."""
    return zlib.decompress(base64.b64decode(packed)).decode().split("\n")


def pack_digests(firsts: list[str | None]) -> str:
    return "\n".join(d or _NO_DIGEST for d in firsts)


# What results share: the keys and frequent values of an item and of a customer as read back. A
# compressor primed with them packs a single result about as well as it would a block of them.
_TILL = {"id": 0, "code": "", "description": "", "name": "", "type": "TILL"}
_RESULT_DICTIONARY = dumps({
    "index": 0, "action": "UPDATED", "entityId": 500000000, "errors": [{"status": False, "code": 0, "message": "",
                                                                       "field": ""}],
    "warnings": [], "input": {"profiles": [{"firstName": "", "lastName": "", "identifiers": [], "fields": {}}]},
    "result": {
        "id": 500000000, "profiles": [{
            "firstName": "", "lastName": "", "attribution": {
                "createDate": "2026-01-01T00:00:00Z", "createdBy": _TILL, "modifiedBy": _TILL,
                "modifiedDate": "2026-01-01T00:00:00Z"},
            "fields": {}, "allFields": {}, "identifiers": [{"type": "mobile", "value": "91"},
                                                           {"type": "email", "value": "@example.com"}],
            "commChannels": [{"type": "email", "value": "", "primary": True, "verified": False, "subscribed": True}],
            "source": "WEB_ENGAGE", "userId": 500000000, "accountId": "", "conflictingProfileList": [],
            "autoUpdateTime": "2026-01-01T00:00:00Z",
            "identifiersAll": [{"type": "externalId", "value": ""}, {"type": "mobile", "value": "91"}]}],
        "loyaltyInfo": {"loyaltyType": "loyalty", "attributionV2": {
            "createDate": "2026-01-01T00:00:00Z", "createdBy": _TILL, "modifiedBy": _TILL,
            "modifiedDate": "2026-01-01T00:00:00Z", "createdFromSource": "WEB_ENGAGE"}, "lifetimePurchases": 0.0},
        "segments": {}, "associatedWith": "", "extendedFields": {}, "cardDetails": []},
    "action2": "CREATED",
}).encode()
#: A result shorter than this is stored as it is: packing would save little.
_PACK_FROM = 160


def pack_result(item: dict) -> str:
    raw = dumps(item)
    if len(raw) < _PACK_FROM:
        return raw
    packer = zlib.compressobj(6, zdict=_RESULT_DICTIONARY)
    packed = PACKED + base64.b64encode(packer.compress(raw.encode()) + packer.flush()).decode("ascii")
    return packed if len(packed) < len(raw) else raw


def unpack_result(stored: str) -> dict:
    if not stored.startswith(PACKED):
        return json.loads(stored)
    unpacker = zlib.decompressobj(zdict=_RESULT_DICTIONARY)
    return json.loads(unpacker.decompress(base64.b64decode(stored[len(PACKED):])) + unpacker.flush())


def input_fields(indexes: list[int]) -> list[str]:
    """The fields of one input chunk to read for ``indexes`` (all in that chunk), whichever way they
    were stored: each packed block, and each item's own field (an earlier version's layout), memo
    (``m:i``) and chain successor (``n:i``); :func:`read_inputs` decodes them."""
    blocks = sorted({block_of(i) for i in indexes})
    return [*(elements_field(b) for b in blocks), *(f for i in indexes for f in (str(i), f"m:{i}", f"n:{i}"))]


def read_inputs(indexes: list[int], values: list[str | None]) -> dict[int, tuple[str | None, str | None, str | None]]:
    """Each index's (element JSON, memo JSON, successor), from the values of :func:`input_fields`."""
    blocks = sorted({block_of(i) for i in indexes})
    unpacked = {b: unpack_elements(v) for b, v in zip(blocks, values, strict=False) if v is not None}
    read: dict[int, tuple[str | None, str | None, str | None]] = {}
    for n, i in enumerate(indexes):
        own, memo, successor = values[len(blocks) + 3 * n:len(blocks) + 3 * n + 3]
        block = unpacked.get(block_of(i))
        element = block[i - block_of(i) * BLOCK] if block is not None else own
        read[i] = (element, memo, successor)
    return read
