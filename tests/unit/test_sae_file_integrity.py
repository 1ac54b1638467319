"""Checkpoints and saved SAEs carry a digest of their tensors; a flipped bit, a truncated file or a
damaged header is refused with one error naming the file (issue 8, items 17 and 19)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from mechscope import checkpoint
from mechscope.digest import CONFIG_DIGEST_KEY, DIGEST_KEY, tensors_digest
from mechscope.errors import MechscopeError
from mechscope.sae import SAEFormatError, load_sae, save_sae
from tests.harness import perturbed_sae

D, N = 8, 16


def _flip_exponent_bit(file, tensor: str, index: int = 0) -> tuple[float, float]:
    """Flip the top exponent bit of element ``index`` of float32 ``tensor`` in a safetensors file, in
    place (the header is left alone). Returns (value before, value after)."""
    raw = bytearray(file.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    begin = json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0]
    at = 8 + n + begin + 4 * index
    before = struct.unpack("<f", raw[at : at + 4])[0]
    raw[at + 3] ^= 0x40  # bit 30: the most significant exponent bit of a little-endian float32
    file.write_bytes(bytes(raw))
    return before, struct.unpack("<f", raw[at : at + 4])[0]


def test_digest_is_a_function_of_names_dtypes_shapes_and_bytes():
    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(1.0)}
    d = tensors_digest(t)
    assert d == tensors_digest({"b": t["b"].clone(), "a": t["a"].clone()})  # order of the dict does not matter
    assert d != tensors_digest({**t, "a": t["a"].reshape(3, 2)})
    assert d != tensors_digest({**t, "a": t["a"].double()})
    assert d != tensors_digest({"c": t["a"], "b": t["b"]})
    bumped = t["a"].clone()
    bumped[1, 2] = torch.nextafter(bumped[1, 2], torch.tensor(99.0))  # one ulp
    assert d != tensors_digest({**t, "a": bumped})


@pytest.mark.parametrize("layout", ["mechscope", "saelens"])
def test_saved_sae_with_one_flipped_exponent_bit_is_refused(layout, tmp_path):
    folder = save_sae(
        perturbed_sae("topk", D, N, k=3), tmp_path / "sae", metadata={"site": "resid_post.6"}, layout=layout
    )
    weights = next(folder.glob("*.safetensors"))
    assert load_file(str(weights))["W_dec"].abs().max() < 10
    before, after = _flip_exponent_bit(weights, "W_dec")
    assert abs(after) > 1e30 or abs(after) < 1e-30, (before, after)  # the flip is a real change of scale
    with pytest.raises(SAEFormatError, match=rf"{weights.name}: tensor digest mismatch"):
        load_sae(folder)


def test_saved_sae_digest_is_also_in_cfg_and_checked_when_the_header_loses_it(tmp_path):
    folder = save_sae(perturbed_sae("relu", D, N), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    state = load_file(str(folder / "sae.safetensors"))
    assert cfg["tensors_sha256"] == tensors_digest(state)
    state["W_dec"][0, 0] += 1.0  # rewritten without a digest in the header: cfg.json's still catches it
    save_file(state, str(folder / "sae.safetensors"))
    with pytest.raises(SAEFormatError, match="digest mismatch"):
        load_sae(folder)


def test_foreign_files_without_digest_load_and_say_nothing_is_verified(tmp_path, capsys):
    sae = perturbed_sae("relu", D, N)
    folder = save_sae(sae, tmp_path / "sae", layout="saelens")
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    save_file(tensors, str(folder / "sae_weights.safetensors"))  # as SAELens writes it: no metadata
    x = torch.randn(5, D)
    assert torch.equal(load_sae(folder).encode(x), sae.encode(x))
    err = capsys.readouterr().err
    assert "no tensor digest" in err and "not verified" in err and "sae_weights.safetensors" in err
    load_sae(save_sae(sae, tmp_path / "ours", layout="saelens"))
    assert capsys.readouterr().err == ""  # our own files are verified, silently


def _checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    sae = perturbed_sae("topk", D, N, k=3)
    tensors = {f"0.sae.{k}": v for k, v in sae.state_dict().items()} | {"rng.torch": torch.get_rng_state()}
    checkpoint.write_atomic(path, tensors, {"step": 7, "scale": 1.5})
    return path, tensors


def test_checkpoint_round_trip_keeps_tensors_and_metadata(tmp_path):
    path, tensors = _checkpoint(tmp_path)
    got, meta = checkpoint.read(path)
    assert meta["step"] == 7 and meta["scale"] == 1.5
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_checkpoint_with_one_flipped_exponent_bit_is_refused(tmp_path):
    path, _ = _checkpoint(tmp_path)
    _flip_exponent_bit(path, "0.sae.W_dec", index=5)
    with pytest.raises(checkpoint.CheckpointError, match=rf"{path}: tensor digest mismatch.*delete it"):
        checkpoint.read(path)


def test_truncated_checkpoint_names_the_file(tmp_path):
    path, _ = _checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=rf"{path}: checkpoint is truncated or its header is damaged"):
        checkpoint.read(path)


def test_damaged_checkpoint_header_is_called_damaged(tmp_path):
    path, _ = _checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0x01  # a bit inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(MechscopeError, match=rf"{path}: .*damaged") as err:
        checkpoint.read(path)
    assert isinstance(err.value, checkpoint.CheckpointError)
    # A flipped bit in the metadata key names is a damaged header too, not a silent "unverified" load.
    path, _ = _checkpoint(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(DIGEST_KEY.encode(), DIGEST_KEY.replace("s", "t", 1).encode()))
    with pytest.raises(checkpoint.CheckpointError, match="no tensor digest.*damaged"):
        checkpoint.read(path)


def test_edited_config_field_of_a_saved_sae_is_refused_but_metadata_edits_are_not(tmp_path):
    folder = save_sae(perturbed_sae("topk", D, N, k=3), tmp_path / "sae", metadata={"site": "a"})
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "metadata": {"site": "b"}, "note": "free text"}))
    assert load_sae(folder).cfg.k == 3
    (folder / "cfg.json").write_text(json.dumps({**cfg, "k": 2}))  # one flipped bit: 3 -> 2
    with pytest.raises(SAEFormatError, match=r"cfg.json: the SAE's config fields .* differ"):
        load_sae(folder)


def test_checkpoint_metadata_edit_is_refused(tmp_path):
    path, _ = _checkpoint(tmp_path)
    raw = path.read_bytes()
    assert raw.count(b'\\"step\\": 7') == 1  # the JSON document sits escaped inside the header's JSON
    path.write_bytes(raw.replace(b'\\"step\\": 7', b'\\"step\\": 5'))
    with pytest.raises(checkpoint.CheckpointError, match="metadata .* does not match the digest"):
        checkpoint.read(path)


def _rename_header_key(file, old: str, new: str) -> None:
    """Rename a metadata key in place: same length, so the header size and tensor offsets stay put."""
    assert len(old) == len(new)
    raw = file.read_bytes()
    assert raw.count(old.encode()) == 1
    file.write_bytes(raw.replace(old.encode(), new.encode()))


@pytest.mark.parametrize(
    "layout, old, new, says",
    [
        (
            "mechscope",
            CONFIG_DIGEST_KEY,
            "mechscope.config_sha25X",
            "missing key 'mechscope.config_sha256', unknown key 'mechscope.config_sha25X'",
        ),
        (
            "mechscope",
            DIGEST_KEY,
            "mechscope.tensors_sha25X",
            "missing key 'mechscope.tensors_sha256', unknown key 'mechscope.tensors_sha25X'",
        ),
        (
            "saelens",
            DIGEST_KEY,
            "mechscope.tensors_sha25X",
            "missing key 'mechscope.tensors_sha256', unknown key 'mechscope.tensors_sha25X'",
        ),
        (
            "saelens",
            DIGEST_KEY,
            "mechscopX.tensors_sha256",  # the prefix itself hit: still one byte from ours
            "missing key 'mechscope.tensors_sha256', unknown key 'mechscopX.tensors_sha256'",
        ),
    ],
)
def test_saved_sae_with_a_flipped_byte_in_a_metadata_key_is_refused(layout, old, new, says, tmp_path, capsys):
    folder = save_sae(perturbed_sae("topk", D, N, k=3), tmp_path / "sae", layout=layout)
    weights = next(folder.glob("*.safetensors"))
    _rename_header_key(weights, old, new)
    with pytest.raises(SAEFormatError, match=rf"{weights.name}: damaged safetensors header: {says}") as err:
        load_sae(folder)
    assert "\n" not in str(err.value) and "not verified" not in capsys.readouterr().err


def test_saved_sae_with_an_unknown_mechscope_key_or_a_stripped_header_is_refused(tmp_path):
    folder = save_sae(perturbed_sae("relu", D, N), tmp_path / "sae")
    file = folder / "sae.safetensors"
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(file))
    save_file(tensors, str(file), metadata={**header, "mechscope.note": "x"})
    with pytest.raises(
        SAEFormatError, match=r"sae.safetensors: damaged safetensors header: unknown key 'mechscope.note'"
    ):
        load_sae(folder)
    save_file(tensors, str(file))  # tensors intact, header gone: cfg.json still says the file is ours
    with pytest.raises(
        SAEFormatError, match=r"missing key 'mechscope.tensors_sha256', missing key 'mechscope.config_sha256'"
    ):
        load_sae(folder)
    # A SAELens-layout file may carry other tools' keys (transformers writes "format": "pt").
    sae = perturbed_sae("relu", D, N)
    folder = save_sae(sae, tmp_path / "lens", layout="saelens")
    save_file(
        load_file(str(folder / "sae_weights.safetensors")),
        str(folder / "sae_weights.safetensors"),
        metadata={"format": "pt"},
    )
    assert torch.equal(load_sae(folder).W_dec, sae.W_dec)


def test_checkpoint_with_an_unknown_mechscope_key_is_refused(tmp_path):
    path, tensors = _checkpoint(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    save_file(tensors, str(path), metadata={**header, "mechscope.extra": "1"})
    with pytest.raises(
        checkpoint.CheckpointError, match=rf"{path}: checkpoint header is damaged \(unknown key 'mechscope.extra'\)"
    ):
        checkpoint.read(path)
