"""The paper's keyword-spotting experiment (Table 1): a DS-CNN grown by splitting vs Bn-prune, on Speech Commands.

Data. The offline copy holds only the official v0.02 *test* set (4,890 clips, 12 classes), so
:func:`load_speech_commands` splits it *by speaker* into train / validation / test: the speaker is the
``<hash>`` of ``<hash>_nohash_<n>.wav`` (every ``_silence_`` clip is its own group), and
``int(sha1(speaker)) % 100`` below ``val_percent`` goes to validation, below ``val_percent +
test_percent`` to test, the rest to train (the dataset's own ``which_set`` rule). Features are 40
log-mel bands x 101 frames (:mod:`nni_splitting.paper.speech`), read from the ``..._logmel40.npz`` file,
or computed with numpy/torch STFT from raw audio (the ``..._wav_subset150.npz`` file, or a folder
``<class>/*.wav``). Inputs are ``[N, 1, frames, 40]`` (time x mel; 101 frames, or 50 with
``time_pool=2``), standardised per mel band with the training split's statistics.

Arms (:func:`run_kws_experiment`): ``splitting`` grows a narrow DS-CNN with the product's
:class:`~nni_splitting.growth.grower.SplittingGrower` (NNI-style ``config_list``); ``full`` is the full-width
DS-CNN; ``bn_slim`` (network slimming, the paper's Bn-prune) and ``slim`` (NNI's ``SlimPruner``) prune
the trained full model with :func:`nni_splitting.baselines.prune_to_ratio` to the splitting arm's
parameter count and fine-tune. Parameters and operations (multiply-adds) are NNI's counter's
(:func:`nni_splitting.count_model`).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nni_splitting.baselines import prune_to_ratio
from nni_splitting.growth.counting import count_model
from nni_splitting.growth.grower import SplittingGrower
from nni_splitting.models import build_model, current_widths
from nni_splitting.common.training import evaluate, train
from nni_splitting.paper.speech import LogMelConfig, log_mel, read_wav_folder

__all__ = [
    "CLASSES", "LOGMEL_FILE", "WAV_FILE", "SOURCES", "KWSData", "speaker_of", "speaker_split",
    "load_speech_commands", "KWSRecipe", "run_kws_experiment",
]

logger = logging.getLogger(__name__)

#: Class order of the offline files (index = label).
CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_")
LOGMEL_FILE = "speech_commands_v0.02_test_logmel40.npz"
WAV_FILE = "speech_commands_v0.02_test_wav_subset150.npz"
SOURCES = ("auto", "logmel", "wav", "folder")
SPLITS = ("train", "val", "test")


class KWSData(NamedTuple):
    """Speaker-disjoint splits of Speech Commands features.

    Attributes
    ----------
    train, val, test : TensorDataset
        ``(float32 [N, 1, frames, 40], int64 [N])``.
    classes : tuple of str
    speakers : dict
        ``{split: sorted speaker ids}`` (disjoint across splits).
    source : str
        Where the features came from: ``"logmel"``, ``"wav"`` or ``"folder"``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: tuple
    speakers: Dict[str, List[str]]
    source: str


def speaker_of(filename: str, label: str) -> str:
    """The speaker of a clip: ``<hash>`` of ``<hash>_nohash_<n>.wav``; otherwise the clip itself (``label/name``)."""
    name = Path(str(filename)).name
    if "_nohash_" in name:
        return name.split("_nohash_")[0]
    return f"{label}/{name}"


def speaker_split(speakers: Sequence[str], val_percent: float = 15.0, test_percent: float = 15.0) -> np.ndarray:
    """Split index per clip (0 train, 1 val, 2 test) from ``int(sha1(speaker)) % 100``: all clips of a speaker together."""
    if val_percent < 0 or test_percent < 0 or val_percent + test_percent >= 100:
        raise ValueError(f"need val_percent, test_percent >= 0 and their sum < 100, got {val_percent!r}, {test_percent!r}")
    buckets = np.array([int(hashlib.sha1(s.encode()).hexdigest(), 16) % 100 for s in speakers])
    return np.where(buckets < val_percent, 1, np.where(buckets < val_percent + test_percent, 2, 0))


def _read_source(data_dir: Path, source: str):
    """``(features [N, 40, frames] float32, labels, filenames, label names, source)``."""
    if source == "auto":
        source = next((s for s, f in (("logmel", LOGMEL_FILE), ("wav", WAV_FILE)) if (data_dir / f).is_file()), "folder")
    if source == "logmel":
        with np.load(data_dir / LOGMEL_FILE) as f:
            return f["logmel"].astype(np.float32), f["y"].astype(np.int64), list(f["filename"]), list(f["label_dir"]), source
    if source == "wav":
        with np.load(data_dir / WAV_FILE) as f:
            audio, labels, names = f["audio"], f["y"].astype(np.int64), list(f["filename"])
    elif source == "folder":
        audio, labels, names = read_wav_folder(data_dir, list(CLASSES))
    else:
        raise ValueError(f"source={source!r} is not one of {SOURCES}")
    features = torch.cat([log_mel(audio[i:i + 256], LogMelConfig()) for i in range(0, len(audio), 256)]).numpy()
    return features, labels, names, [CLASSES[int(y)] for y in labels], source


def load_speech_commands(data_dir: Union[str, Path], source: str = "auto", val_percent: float = 15.0,
                         test_percent: float = 15.0, time_pool: int = 1) -> KWSData:
    """Load Speech Commands features and split them by speaker (see the module docstring).

    Parameters
    ----------
    data_dir : path
        The folder with ``speech_commands_v0.02_test_logmel40.npz`` / ``..._wav_subset150.npz``, or with
        ``<class>/*.wav`` class folders (names of :data:`CLASSES`).
    source : {"auto", "logmel", "wav", "folder"}
        ``"auto"``: the log-mel file if present, else the raw-audio file, else the class folders.
    val_percent, test_percent : float
        Percent of the speakers (by hash) in the validation and test splits.
    time_pool : int
        Average this many consecutive frames (2: 50 frames of 20 ms, about the 49 frames of the
        DS-CNN of Zhang et al. 2017; a trailing incomplete group is dropped).
    """
    data_dir = Path(data_dir).expanduser()
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {SOURCES}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Speech Commands folder {str(data_dir)!r} not found (expected {LOGMEL_FILE}, "
                                f"{WAV_FILE} or <class>/*.wav in it)")
    if isinstance(time_pool, bool) or not isinstance(time_pool, int) or time_pool < 1:
        raise ValueError(f"time_pool must be a positive int, got {time_pool!r}")
    features, labels, names, label_dirs, source = _read_source(data_dir, source)
    if time_pool > 1:
        frames = features.shape[2] // time_pool * time_pool
        features = features[:, :, :frames].reshape(*features.shape[:2], -1, time_pool).mean(-1)
    speakers = [speaker_of(n, l) for n, l in zip(names, label_dirs)]
    split = speaker_split(speakers, val_percent, test_percent)
    x = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 2, 1)))[:, None]  # [N, 1, frames, mels]
    train_x = x[torch.from_numpy(split == 0)]
    mean, std = train_x.mean(dim=(0, 1, 2), keepdim=True), train_x.std(dim=(0, 1, 2), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(labels)
    parts = [TensorDataset(x[torch.from_numpy(split == k)], y[torch.from_numpy(split == k)]) for k in range(3)]
    by_split = {name: sorted({s for s, k in zip(speakers, split) if k == i}) for i, name in enumerate(SPLITS)}
    logger.info("speech commands (%s): train %d, val %d, test %d clips; %d / %d / %d speakers", source,
                *(len(p) for p in parts), *(len(by_split[s]) for s in SPLITS))
    return KWSData(*parts, classes=CLASSES, speakers=by_split, source=source)


class KWSRecipe(NamedTuple):
    """The reduced CPU recipe of :func:`run_kws_experiment` (about 6 minutes per seed on one free core).

    ``start_widths`` grow by ``grow_ratio`` of the conv neurons per step for ``steps`` steps, with
    ``epochs_per_step`` epochs before each splitting phase and ``final_epochs`` at the end; ``full_widths``
    trains for ``full_epochs``; pruned models sparsity-train ``prune_steps`` steps and fine-tune
    ``finetune_epochs``. SGD + momentum 0.9, cosine schedule (restarted for every training phase),
    weight decay 5e-4, batch ``batch_size``; pruning and fine-tuning use ``lr / 5``.
    """

    start_widths: tuple = (16, 16, 16, 16, 16)
    full_widths: tuple = (64, 64, 64, 64, 64)
    grow_ratio: float = 0.35
    steps: int = 3
    epochs_per_step: int = 5
    final_epochs: int = 15
    full_epochs: int = 20
    prune_steps: int = 300
    finetune_epochs: int = 10
    lr: float = 0.2
    batch_size: int = 32
    epsilon: float = 0.1
    split_samples: int = 512
    arms: tuple = ("splitting", "full", "bn_slim", "slim")


def _row(arm: str, model: nn.Module, data: KWSData, dummy: torch.Tensor, seconds: float, **extra) -> dict:
    flops, params = count_model(model, dummy)
    loader = DataLoader(data.test, batch_size=256)
    row = {"arm": arm, "test_acc": evaluate(model, loader), "val_acc": evaluate(model, DataLoader(data.val, batch_size=256)),
           "params": params, "flops": flops, "widths": current_widths(model) if hasattr(model, "width_layers") else None,
           "seconds": round(seconds, 1), **extra}
    logger.info("%s: test acc %.4f, %d params, %.2fM ops, widths %s", arm, row["test_acc"], params, flops / 1e6,
                row["widths"])
    return row


def run_kws_experiment(data: KWSData, recipe: KWSRecipe = KWSRecipe(), seed: int = 0) -> Dict[str, list]:
    """Run the arms of ``recipe.arms``; returns ``{"rows": [one dict per model], "growth": [per-step dicts]}``.

    Each row has ``arm``, ``test_acc``, ``val_acc``, ``params``, ``flops`` (multiply-adds), ``widths``
    and ``seconds``. The pruning arms prune the ``full`` arm's model to the ``splitting`` arm's
    parameter count, so they need both.
    """
    unknown = sorted(set(recipe.arms) - {"splitting", "full", "bn_slim", "slim"})
    if unknown:
        raise ValueError(f"unknown arms {unknown} in {recipe.arms!r}")
    if set(recipe.arms) & {"bn_slim", "slim"} and not {"splitting", "full"} <= set(recipe.arms):
        raise ValueError(f"the pruning arms need the 'splitting' and 'full' arms, got {recipe.arms!r}")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(data.train, batch_size=recipe.batch_size, shuffle=True, generator=generator)
    dummy = data.train.tensors[0][:1]
    rows: List[dict] = []
    growth: List[dict] = []

    def fit(model: nn.Module, epochs: int, lr: float = recipe.lr) -> nn.Module:
        model.to(memory_format=torch.channels_last)  # depthwise convs train several times faster on CPU
        train(model, train_loader, epochs=epochs, lr=lr, seed=seed, progress=False)
        return model

    if "splitting" in recipe.arms:
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = build_model("ds_cnn", list(recipe.start_widths), num_classes=len(data.classes), in_channels=1)
        index = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:recipe.split_samples]
        batches = [(data.train.tensors[0][index[i:i + 128]], data.train.tensors[1][index[i:i + 128]])
                   for i in range(0, len(index), 128)]

        def train_and_record(m: nn.Module) -> nn.Module:
            fit(m, recipe.epochs_per_step)
            growth.append(_row("splitting (step)", m, data, dummy, time.perf_counter() - start, step=len(growth),
                               seed=seed))
            return m

        grower = SplittingGrower(model, [{"op_types": ["Conv2d"], "grow_ratio": recipe.grow_ratio}], train_and_record,
                                 batches=batches, epsilon=recipe.epsilon)
        grown = grower.grow(steps=recipe.steps)
        fit(grown, recipe.final_epochs)
        rows.append(_row("splitting", grown, data, dummy, time.perf_counter() - start, seed=seed,
                         start_widths=list(recipe.start_widths), history=grower.history))
    if "full" in recipe.arms:
        start = time.perf_counter()
        torch.manual_seed(seed)
        full = fit(build_model("ds_cnn", list(recipe.full_widths), num_classes=len(data.classes), in_channels=1),
                   recipe.full_epochs)
        rows.append(_row("full", full, data, dummy, time.perf_counter() - start, seed=seed))
        target = next((r["params"] for r in rows if r["arm"] == "splitting"), 0)
        for method in ("bn_slim", "slim"):
            if method not in recipe.arms:
                continue
            start = time.perf_counter()
            ratio = min(1.0, target / next(r["params"] for r in rows if r["arm"] == "full"))
            pruned, info = prune_to_ratio(copy.deepcopy(full), method, ratio, dummy, evaluator=train_loader,
                                          training_steps=recipe.prune_steps, lr=recipe.lr / 5, seed=seed)
            before = evaluate(pruned, DataLoader(data.test, batch_size=256))
            fit(pruned, recipe.finetune_epochs, lr=recipe.lr / 5)
            rows.append(_row(method, pruned, data, dummy, time.perf_counter() - start, seed=seed,
                             test_acc_before_finetune=before, target_params=info.target_params))
    return {"rows": rows, "growth": growth}
