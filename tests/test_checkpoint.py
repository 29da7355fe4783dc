"""One checkpoint format: atomic write with a SHA-256, and corrupt or foreign files named in a ValueError."""
import pytest
import torch

from nni_splitting.growth.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from nni_splitting.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("small_cnn", widths=[2, 3, 4], in_channels=1, num_classes=10)


def test_round_trip_and_hash(tmp_path):
    model = _model()
    path = tmp_path / "checkpoint.pt"
    digest = save_checkpoint(path, model, "small_cnn", step=3)
    assert digest == file_sha256(path) and len(digest) == 64
    loaded, state = load_checkpoint(path)
    assert state["step"] == 3 and state["widths"] == [2, 3, 4]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _model(), "small_cnn")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="checkpoint.pt.*unreadable"):
        load_checkpoint(path)


def test_foreign_and_missing_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not an nni-splitting checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    mismatched = tmp_path / "mismatch.pt"
    save_checkpoint(mismatched, _model(), "small_cnn")
    state = torch.load(mismatched, weights_only=True)
    state["widths"] = [5, 5, 5]
    torch.save(state, mismatched)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(mismatched)
