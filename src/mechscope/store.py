"""Activation store: sharded safetensors files plus a JSON manifest, read memory-mapped.

Layout of a store folder::

    manifest.json            model id, sites, widths, dtype, context length, seed, shards (+ sha256, bytes)
    train-00000.safetensors  tensors "acts/<site>" [R, d] and "tokens" [C, T] (int32) for C contexts
    val-00000.safetensors    the same for held-out contexts (never in training)
    progress-rank1.json      while a torchrun harvest runs: the shards rank 1 has finished (rank 0 folds it
                             into the manifest when every rank is done, then removes it)

Rows: every context contributes ``rows_per_context`` consecutive rows, token positions
``first_position .. T-1`` (the BOS position is skipped by default: its residual is an outlier that
says nothing about the text). Row r of a split is context ``r // rows_per_context`` at position
``first_position + r % rows_per_context``.

Shards are checked against the manifest: missing or wrong-sized files on open, sha256 on first
read of each shard. The manifest checks itself: it carries ``digest``, the sha256 of its own other
fields (canonical JSON), so an edited field (``rows_per_context`` 127 → 117) is refused like a
corrupt shard. Rows read are checked to be finite (the file and row of the first NaN/Inf are named).
Any mismatch raises :class:`StoreCorruptError`; nothing is read silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mechscope.digest import (
    sha256_file,  # also re-exported: harvest checks shards with it
)
from mechscope.errors import MechscopeError, UsageError

MANIFEST = "manifest.json"
FORMAT = "mechscope-activation-store"
Split = Literal["train", "val"]

# safetensors dtype tag → (numpy dtype used to map the bytes, torch dtype they really hold)
_DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),
    "I32": (np.int32, torch.int32),
    "I64": (np.int64, torch.int64),
}


class StoreCorruptError(MechscopeError, RuntimeError):
    """A shard is missing, truncated, or does not match the checksum in the manifest."""


class StoreSiteError(MechscopeError, KeyError):
    """A site the store does not hold (a usage error: exit 2)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class StoreMissingError(MechscopeError, FileNotFoundError):
    """No activation store at the path given."""


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's fields other than ``digest``, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any], name: str = MANIFEST) -> None:
    """Write ``folder/name`` (the manifest, or a rank's progress record) atomically with its digest (the dict
    passed is not changed)."""
    from mechscope.atomic import atomic_write_json

    atomic_write_json(Path(folder) / name, {**manifest, "digest": manifest_digest(manifest)})


def read_manifest(folder: Path, name: str = MANIFEST) -> dict[str, Any]:
    """The manifest (or the progress record ``name``) of the store in ``folder``, refused unless it parses, is ours
    and matches its digest."""
    mpath = Path(folder) / name
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreCorruptError(
            f"{mpath} is not valid JSON (truncated or damaged: {err}); "
            "harvest again into a new folder (or delete this one and re-run the same harvest)"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreCorruptError(f"{mpath} is not a mechscope activation store manifest")
    if "digest" not in manifest:
        raise StoreCorruptError(
            f"{mpath} carries no digest of its fields (written by an older mechscope, or edited); "
            "harvest again into a new folder"
        )
    if manifest["digest"] != manifest_digest(manifest):
        raise StoreCorruptError(
            f"{mpath} was edited or damaged: its fields do not match its digest; "
            "restore the file or harvest again into a new folder"
        )
    return manifest


def safetensors_index(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header dict) of a safetensors file, read without loading tensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise StoreCorruptError(f"{path} is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", raw)
        header = f.read(n)
    if len(header) != n:
        raise StoreCorruptError(f"{path} is truncated inside its safetensors header")
    return 8 + n, json.loads(header)


def mmap_tensor(path: Path, offset: int, info: dict[str, Any]) -> np.ndarray:
    """Memory-map one tensor of a safetensors file as a numpy array (no copy)."""
    np_dtype, _ = _DTYPES[info["dtype"]]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
        raise StoreCorruptError(f"{path}: tensor size does not match its shape {shape}")
    return np.memmap(path, dtype=np_dtype, mode="r", offset=offset + begin, shape=shape)


def _to_torch(a: np.ndarray, tag: str) -> Tensor:
    t = torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))
    return t.view(torch.bfloat16) if tag == "BF16" else t


class ActivationStore:
    """Read side of a store. ``ActivationStore(path)`` checks the manifest and shard sizes at once."""

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise StoreMissingError(
                f"no activation store at {self.path} (missing {MANIFEST}); create one with `mechscope harvest`"
            )
        self.manifest: dict[str, Any] = read_manifest(self.path)
        if not self.manifest.get("complete", False):
            raise StoreCorruptError(
                f"store {self.path} is incomplete (harvest interrupted?); re-run the same harvest command to resume it"
            )
        self.verify = verify
        self._checked: set[str] = set()
        self._maps: dict[str, tuple[int, dict[str, Any]]] = {}
        for sh in self.manifest["shards"]:
            f = self.path / sh["file"]
            if not f.is_file():
                raise StoreCorruptError(f"shard {f} listed in the manifest is missing")
            if f.stat().st_size != sh["bytes"]:
                raise StoreCorruptError(
                    f"shard {f} has {f.stat().st_size} bytes, the manifest says {sh['bytes']} (truncated or overwritten)"
                )

    # --- description -------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return [s["name"] for s in self.manifest["sites"]]

    def site_name(self, site: str) -> str:
        """Canonical site name for ``site`` (accepts the aliases used at harvest time)."""
        if site in self.sites:
            return site
        alias = self.manifest.get("aliases", {}).get(site)
        if alias:
            return alias
        raise StoreSiteError(
            f"site {site!r} is not in store {self.path}; it holds {', '.join(self.sites)}"
            + (f" (aliases {', '.join(self.manifest['aliases'])})" if self.manifest.get("aliases") else "")
        )

    def d(self, site: str) -> int:
        name = self.site_name(site)
        return next(s["d"] for s in self.manifest["sites"] if s["name"] == name)

    @property
    def rows_per_context(self) -> int:
        return int(self.manifest["rows_per_context"])

    @property
    def first_position(self) -> int:
        return int(self.manifest["first_position"])

    def _shards(self, split: Split) -> list[dict[str, Any]]:
        return [s for s in self.manifest["shards"] if s["split"] == split]

    def n_rows(self, split: Split = "train") -> int:
        return sum(s["rows"] for s in self._shards(split))

    def row_to_position(self, row: int, split: Split = "train") -> tuple[int, int]:
        """(context index into ``tokens(split)``, token position) of a row."""
        return row // self.rows_per_context, self.first_position + row % self.rows_per_context

    # --- reading -----------------------------------------------------------------------------
    def _open(self, shard: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        f = self.path / shard["file"]
        if self.verify and shard["file"] not in self._checked:
            digest = sha256_file(f)
            if digest != shard["sha256"]:
                raise StoreCorruptError(
                    f"shard {f} fails its checksum (sha256 {digest[:12]}…, manifest {shard['sha256'][:12]}…): the file is corrupt; harvest again into a new folder (a re-run of the same harvest redoes it)"
                )
            self._checked.add(shard["file"])
        if shard["file"] not in self._maps:
            self._maps[shard["file"]] = safetensors_index(f)
        return self._maps[shard["file"]]

    def _array(self, shard: dict[str, Any], key: str) -> tuple[np.ndarray, str]:
        offset, header = self._open(shard)
        if key not in header:
            raise StoreCorruptError(f"shard {shard['file']} has no tensor {key!r}")
        return mmap_tensor(self.path / shard["file"], offset, header[key]), header[key]["dtype"]

    def tokens(self, split: Split = "train") -> Tensor:
        """Token ids of every context of a split, [N, T] int64."""
        parts = [_to_torch(*self._array(s, "tokens")).long() for s in self._shards(split)]
        return torch.cat(parts) if parts else torch.empty(0, self.manifest["context_length"], dtype=torch.long)

    def rows(self, site: str, start: int = 0, stop: int | None = None, split: Split = "train") -> Tensor:
        """Rows ``start:stop`` of a site, [B, d] float32."""
        return self.gather(site, np.arange(start, self.n_rows(split) if stop is None else stop), split)

    def gather(self, site: str | tuple[str, ...], index: np.ndarray, split: Split = "train") -> Tensor:
        """Rows at ``index`` (any order) of a site, [len(index), d] float32, in the order of ``index``.

        A tuple of sites gives paired rows: the sites' rows at the same tokens side by side,
        [len(index), d_1 + d_2 + …] (a transcoder's input and target sites)."""
        if isinstance(site, (tuple, list)):
            return torch.cat([self.gather(s, index, split) for s in site], dim=1)
        key = "acts/" + self.site_name(site)
        shards = self._shards(split)
        bounds = np.cumsum([0] + [s["rows"] for s in shards])
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= bounds[-1]):
            raise IndexError(f"row index out of range 0..{bounds[-1] - 1} for split {split!r}")
        out = torch.empty(len(index), self.d(site), dtype=torch.float32)
        which = np.searchsorted(bounds, index, side="right") - 1
        for i in np.unique(which):
            sel = np.nonzero(which == i)[0]
            arr, tag = self._array(shards[i], key)
            out[torch.from_numpy(sel)] = _to_torch(arr[index[sel] - bounds[i]], tag).float()
        if not bool(torch.isfinite(out).all()):
            bad = int(torch.nonzero(~torch.isfinite(out).all(1))[0, 0])
            i = int(which[bad])
            raise StoreCorruptError(
                f"non-finite activation (NaN or Inf) in {self.path / shards[i]['file']}, {key!r} row {int(index[bad] - bounds[i])} "
                f"({split} row {int(index[bad])}): the model produced it or the shard was altered; "
                "harvest again (in float32 if the store is float16), or evaluate on other rows"
            )
        return out

    @torch.no_grad()
    def mean(
        self, site: str, rows: int = 65_536, split: Split = "train", seed: int = 0, batch_size: int = 4096
    ) -> Tensor:
        """Mean row [d] over up to ``rows`` rows of a split drawn without replacement (seeded), summed in float64.

        The mean-ablation baseline uses the training split, never the held-out rows it is compared on."""
        n = self.n_rows(split)
        take = np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False))
        total = torch.zeros(self.d(site), dtype=torch.float64)
        for lo in range(0, take.size, batch_size):
            total += self.gather(site, take[lo : lo + batch_size], split).double().sum(0)
        return (total / max(take.size, 1)).float()

    def batches(
        self,
        site: str | tuple[str, ...],
        batch_size: int,
        seed: int = 0,
        start_batch: int = 0,
        drop_last: bool = True,
        split: Split = "train",
        epochs: int | None = 1,
    ) -> Iterator[Tensor]:
        """Shuffled batches [batch_size, d] across all shards, in an order fixed by ``seed``; a tuple of
        sites gives paired rows [batch_size, d_1 + d_2 + …] (:meth:`gather`).

        Epoch e uses the permutation drawn from ``seed + e``; batch numbering runs on across epochs,
        so ``start_batch`` resumes exactly where a previous run stopped. ``epochs=None`` loops forever.
        """
        n = self.n_rows(split)
        per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if per_epoch == 0:
            raise UsageError(
                f"split {split!r} of store {self.path} has {n} rows, fewer than one batch of {batch_size}; "
                "use a smaller batch size or harvest more tokens"
            )
        b = start_batch
        while epochs is None or b < epochs * per_epoch:
            epoch, i = divmod(b, per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()
            while i < per_epoch:
                # Sorted within a batch: contiguous reads from each memory-mapped shard.
                yield self.gather(site, np.sort(perm[i * batch_size : (i + 1) * batch_size]), split)
                i += 1
                b += 1
