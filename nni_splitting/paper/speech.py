"""Log-mel features of 1-second speech clips with numpy/torch only (no torchaudio, no audio stack).

The recipe is the one of the offline Speech Commands copy (``speech_commands_v0.02_test_logmel40.npz``):
16 kHz audio scaled to ``[-1, 1)`` (int16 / 32768), a 25 ms periodic Hann window (400 samples), a
512-point FFT every 10 ms (160 samples) with ``torch.stft(center=True, pad_mode="reflect")`` (101 frames
for one second), the power spectrum, 40 triangular HTK-mel filters from 20 to 8000 Hz without area
normalisation, and ``log(mel + 1e-6)``:

    X_t(f) = sum_k w(k) x(160 t + k - 256) e^{-2 pi i f k / 512},      M_t(b) = sum_f |X_t(f)|^2 H_b(f),
    feature_t(b) = log(M_t(b) + 1e-6),      mel(hz) = 2595 log10(1 + hz / 700).

WAV files are read with Python's ``wave`` module (16-bit PCM mono).
"""
from __future__ import annotations

import logging
import wave
from pathlib import Path
from typing import List, NamedTuple, Tuple, Union

import numpy as np
import torch

__all__ = ["LogMelConfig", "hz_to_mel", "mel_to_hz", "mel_filterbank", "log_mel", "read_wav", "read_wav_folder"]

logger = logging.getLogger(__name__)


class LogMelConfig(NamedTuple):
    """Parameters of :func:`log_mel` (defaults: those of the offline Speech Commands features)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 8000.0
    log_offset: float = 1e-6


def hz_to_mel(hz):
    """HTK mel scale ``2595 log10(1 + hz / 700)`` (numpy or torch)."""
    lib = torch if isinstance(hz, torch.Tensor) else np
    return 2595.0 * lib.log10(1.0 + hz / 700.0)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(config: LogMelConfig = LogMelConfig(), dtype=torch.float64) -> torch.Tensor:
    """Triangular HTK-mel filters ``H``: ``[n_fft // 2 + 1, n_mels]``, peak 1, no area normalisation.

    Filter ``b`` rises from mel point ``b`` to ``b + 1`` and falls to ``b + 2`` of ``n_mels + 2`` points
    evenly spaced in mel between ``f_min`` and ``f_max``.
    """
    if not 0 <= config.f_min < config.f_max <= config.sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {config!r}")
    freqs = torch.linspace(0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=dtype)
    points = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(config.f_min, dtype=dtype)),
                                      hz_to_mel(torch.tensor(config.f_max, dtype=dtype)), config.n_mels + 2, dtype=dtype))
    widths = points[1:] - points[:-1]                       # [n_mels + 1]
    slopes = points[None, :] - freqs[:, None]               # [F, n_mels + 2]
    rising = -slopes[:, :-2] / widths[:-1]                  # (f - left) / (centre - left)
    falling = slopes[:, 2:] / widths[1:]                    # (right - f) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(audio: Union[np.ndarray, torch.Tensor], config: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    """Log-mel features of a batch of clips: ``[N, T]`` samples -> ``[N, n_mels, frames]`` float32.

    int16 input is scaled by ``1 / 32768``; float input is taken as already in ``[-1, 1]``.
    """
    samples = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    if samples.dim() == 1:
        samples = samples[None]
    if samples.dim() != 2:
        raise ValueError(f"audio must be [N, samples] or [samples], got shape {list(samples.shape)}")
    if samples.shape[1] <= config.n_fft // 2:
        raise ValueError(f"clips of {samples.shape[1]} samples are too short for n_fft={config.n_fft} (reflect padding)")
    if samples.dtype == torch.int16:
        samples = samples.to(torch.float64) / 32768.0
    else:
        samples = samples.to(torch.float64)
    window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
    spectrum = torch.stft(samples, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
                          window=window, center=True, pad_mode="reflect", return_complex=True)  # [N, F, frames]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = torch.einsum("nft,fb->nbt", power, mel_filterbank(config))
    return torch.log(mel + config.log_offset).to(torch.float32)


def read_wav(path: Union[str, Path]) -> Tuple[np.ndarray, int]:
    """``(int16 samples [T], sample rate)`` of a 16-bit PCM mono WAV file."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2 or handle.getnchannels() != 1:
            raise ValueError(f"{path}: only 16-bit mono PCM is supported, got {handle.getsampwidth() * 8}-bit, "
                             f"{handle.getnchannels()} channel(s)")
        frames = handle.readframes(handle.getnframes())
        return np.frombuffer(frames, dtype="<i2").copy(), handle.getframerate()


def read_wav_folder(root: Union[str, Path], classes: List[str], length: int = 16000
                    ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read ``root/<class>/*.wav`` for the given class folders: ``(audio int16 [N, length], labels, filenames)``.

    Clips are zero-padded or cut to ``length`` samples (Speech Commands clips are up to one second).
    A missing class folder raises ``FileNotFoundError``.
    """
    root = Path(root)
    audio, labels, names = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {str(folder)!r} not found (expected {root}/<class>/*.wav)")
        for path in sorted(folder.glob("*.wav")):
            samples, rate = read_wav(path)
            if rate != 16000:
                raise ValueError(f"{path}: sample rate {rate}, expected 16000")
            clip = np.zeros(length, dtype=np.int16)
            clip[:min(length, len(samples))] = samples[:length]
            audio.append(clip)
            labels.append(label)
            names.append(path.name)
    if not audio:
        raise FileNotFoundError(f"no .wav files under {str(root)!r} in the class folders {classes}")
    return np.stack(audio), np.array(labels, dtype=np.int64), names
