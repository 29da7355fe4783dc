"""Table 1 (keyword spotting): numpy/torch log-mel features against the provided ones, the speaker split, and a
minimal run of every arm (splitting grows the DS-CNN; the pruned arms land at the splitting arm's size)."""
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nni_splitting.paper import kws as K
from nni_splitting.paper.speech import LogMelConfig, log_mel, mel_filterbank, read_wav_folder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands"
needs_data = pytest.mark.skipif(not (DATA / K.LOGMEL_FILE).is_file(), reason="no ../shared/data/speech_commands")


def test_mel_filterbank_and_a_tone_land_in_the_right_band():
    bank = mel_filterbank()
    assert bank.shape == (257, 40) and float(bank.min()) == 0.0 and float(bank.max()) <= 1.0
    t = torch.arange(16000, dtype=torch.float64) / 16000
    features = log_mel((0.5 * torch.sin(2 * torch.pi * 1000 * t)).numpy())
    assert features.shape == (1, 40, 101)
    strongest = int(features[0, :, 50].argmax())
    assert float(bank[int(round(1000 / 16000 * 512)), strongest]) > 0  # the 1 kHz bin is in the strongest band
    with pytest.raises(ValueError, match=r"\[1, 2, 3\]"):
        log_mel(np.zeros((1, 2, 3)))


def test_speaker_split_keeps_speakers_together():
    names = [f"{s:08x}_nohash_{k}.wav" for s in range(300) for k in range(3)] + ["17.wav", "18.wav"]
    labels = ["yes"] * 900 + ["_silence_"] * 2
    speakers = [K.speaker_of(n, l) for n, l in zip(names, labels)]
    assert speakers[0] == "00000000" and speakers[-1] == "_silence_/18.wav"
    split = K.speaker_split(speakers)
    for i in range(0, 900, 3):
        assert len(set(split[i:i + 3])) == 1
    fractions = np.bincount(split, minlength=3) / len(split)
    assert 0.6 < fractions[0] < 0.8 and 0.08 < fractions[1] < 0.22 and 0.08 < fractions[2] < 0.22
    with pytest.raises(ValueError, match="60"):
        K.speaker_split(speakers, 60, 60)


@needs_data
def test_log_mel_matches_the_provided_features_and_wav_folders_load(tmp_path):
    with np.load(DATA / K.WAV_FILE) as f:
        audio, y, names = f["audio"][::150][:12], f["y"][::150][:12], list(f["filename"][::150][:12])
    with np.load(DATA / K.LOGMEL_FILE) as f:
        where = {(str(l), str(n)): i for i, (l, n) in enumerate(zip(f["label_dir"], f["filename"]))}
        reference = f["logmel"][[where[(K.CLASSES[int(c)], n)] for c, n in zip(y, names)]].astype(np.float32)
    ours = log_mel(audio, LogMelConfig()).numpy()
    assert ours.shape == reference.shape == (12, 40, 101)
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.999
    assert np.abs(ours - reference).max() < 0.02  # the provided file is float16
    for c, n, clip in zip(y, names, audio):  # the same clips as <class>/*.wav, read with the stdlib
        folder = tmp_path / K.CLASSES[int(c)]
        folder.mkdir(exist_ok=True)
        with wave.open(str(folder / n), "wb") as handle:
            handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
            handle.writeframes(clip.astype("<i2").tobytes())
    for name in K.CLASSES:
        (tmp_path / name).mkdir(exist_ok=True)
    read, labels, files = read_wav_folder(tmp_path, list(K.CLASSES))
    assert read.shape == (12, 16000) and sorted(files) == sorted(names)
    data = K.load_speech_commands(tmp_path, source="folder", val_percent=30, test_percent=30)
    assert data.source == "folder" and data.train.tensors[0].shape[1:] == (1, 101, 40)


@needs_data
def test_minimal_kws_run_splitting_full_and_bn_prune():
    data = K.load_speech_commands(DATA)
    assert data.source == "logmel" and sum(len(d) for d in (data.train, data.val, data.test)) == 4890
    assert not set(data.speakers["train"]) & (set(data.speakers["val"]) | set(data.speakers["test"]))
    assert not set(data.speakers["val"]) & set(data.speakers["test"])
    assert data.train.tensors[0].shape[1:] == (1, 101, 40)

    def subset(d, n):
        return TensorDataset(d.tensors[0][:n], d.tensors[1][:n])

    small = data._replace(train=subset(data.train, 256), val=subset(data.val, 64), test=subset(data.test, 128))
    recipe = K.KWSRecipe(start_widths=(4,) * 5, full_widths=(10,) * 5, steps=1, epochs_per_step=1, final_epochs=1,
                         full_epochs=1, prune_steps=2, finetune_epochs=1, split_samples=64, batch_size=64,
                         arms=("splitting", "full", "bn_slim"))  # "slim" (NNI's SlimPruner): +40 s, not run here
    result = K.run_kws_experiment(small, recipe)
    rows = {row["arm"]: row for row in result["rows"]}
    assert set(rows) == {"splitting", "full", "bn_slim"}
    split, full = rows["splitting"], rows["full"]
    assert sum(split["widths"]) > 20 and split["params"] < full["params"]  # it grew from 4 x 5, still smaller
    assert len(result["growth"]) == 1 and split["history"][0]["splits"] > 0
    for method in ("bn_slim",):
        assert rows[method]["params"] < full["params"]
        assert abs(rows[method]["params"] - split["params"]) < 0.35 * split["params"]
    assert all(0 <= row["test_acc"] <= 1 and row["flops"] > 0 for row in rows.values())
    with pytest.raises(ValueError, match="'nope'"):
        K.run_kws_experiment(small, recipe._replace(arms=("nope",)))
