"""``artclf shard --verify URL``: re-read every shard and check it against ``_info.json``.

For each shard: sha256 and byte count of the whole file, the sample count, its keys against
the sample index (``_index.json``), and every sample: a key, a decodable ``jpg``, a ``cls``
that is a class index, a ``json``. Every problem is printed with its shard and key; any
problem makes the command exit 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import defaultdict

from PIL import Image

from artclf import storage
from artclf.data import INDEX
from artclf.errors import ArtclfError

FIELDS = {"jpg", "cls", "json"}


class _Hashing(io.RawIOBase):
    """A read-through stream that hashes and counts what passes."""

    def __init__(self, raw) -> None:
        self.raw, self.sha, self.bytes = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.raw.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.sha.update(data)
        self.bytes += n
        return n


def _check_sample(key: str, fields: dict[str, bytes], num_classes: int) -> list[str]:
    problems = []
    if set(fields) != FIELDS:
        problems.append(f"fields {sorted(fields)}, expected {sorted(FIELDS)}")
    try:
        with Image.open(io.BytesIO(fields.get("jpg", b""))) as im:
            im.load()
    except Exception as e:  # any decoder failure is a finding, not a crash
        problems.append(f"jpg does not decode ({type(e).__name__}: {e})")
    try:
        label = int(fields.get("cls", b"").decode())
        if not 0 <= label < num_classes:
            problems.append(f"cls {label} outside 0..{num_classes - 1}")
    except ValueError:
        problems.append(f"cls {fields.get('cls')!r} is not an integer")
    try:
        json.loads(fields.get("json", b""))
    except ValueError:
        problems.append("json does not parse")
    return [f"{key}: {p}" for p in problems]


def verify_shard(url: str, expected: dict, num_classes: int, keys: list[str] | None = None) -> list[str]:
    """Problems found in one shard (empty when it is sound); ``keys``: what ``_index.json`` lists."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    problems = []
    try:
        with storage.open_read(url) as raw:
            stream = _Hashing(raw)
            with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    samples[key][ext] = tar.extractfile(member).read()
            while stream.read(1 << 20):  # tar's end padding counts in the hash
                pass
    except (tarfile.TarError, OSError, ArtclfError) as e:
        return [f"cannot read the shard ({type(e).__name__}: {e})"]
    for key, fields in samples.items():
        problems += _check_sample(key, fields, num_classes)
    if keys is not None and keys != list(samples):
        problems.append(f"its samples are not the ones _index.json lists ({len(keys)} keys there)")
    if len(samples) != expected["num_samples"]:
        problems.append(f"{len(samples)} samples, _info.json says {expected['num_samples']}")
    if stream.bytes != expected["bytes"]:
        problems.append(f"{stream.bytes} bytes, _info.json says {expected['bytes']}")
    if stream.sha.hexdigest() != expected["sha256"]:
        problems.append(f"sha256 {stream.sha.hexdigest()[:12]}…, _info.json says {expected['sha256'][:12]}…")
    return problems


def verify(url: str) -> dict:
    """Check every shard listed in ``url/_info.json``; raises ArtclfError when any problem."""
    info_url = storage.join(url, "_info.json")
    if not storage.exists(info_url):
        raise ArtclfError(f"{info_url}: not found; is {url} a shard folder written by `artclf shard`?")
    info = json.loads(storage.read_bytes(info_url))
    index_url = storage.join(url, INDEX)
    index = json.loads(storage.read_bytes(index_url))["splits"] if storage.exists(index_url) else None
    if index is None:
        print(f"{index_url}: not found (rerun `artclf shard` to write it; train indexes such a set at start)")
    bad, total = int(index is None), 0
    for split, s in info["splits"].items():
        listed = dict(zip(index[split]["filenames"], index[split]["keys"], strict=True)) if index else {}
        for name, length in zip(s["filenames"], s["shard_lengths"], strict=True):
            expected = {**info["shards"][name], "num_samples": length}
            keys = listed.get(name, []) if index else None
            problems = verify_shard(storage.join(url, name), expected, len(info["classes"]), keys)
            total += expected["num_samples"]
            for p in problems:
                print(f"{storage.join(url, name)}: {p}")
            bad += bool(problems)
    n = sum(len(s["filenames"]) for s in info["splits"].values())
    if bad:
        raise ArtclfError(f"{url}: {bad} of {n} shards have problems (listed above)")
    print(f"verify: {n} shards, {total} samples, all sound ({url})")
    return {"shards": n, "samples": total, "bad": 0}
