"""The shared training loop: it learns digits, is deterministic with a seed, and its NNI evaluator trains."""
import pytest
import torch
import torch.nn as nn

from nni_splitting.common.data import load_dataset, make_loaders
from nni_splitting.models import build_model
from nni_splitting.common.training import (Recipe, _lr_factor, _wants_augmentation, augment_batch, evaluate,
                                     evaluate_loss_accuracy, fit, torch_evaluator, train)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return make_loaders(load_dataset("digits"), batch_size=64, seed=0)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", widths=[8, 16, 32])


def test_train_reduces_loss_on_digits(digits):
    train_loader, _, test_loader = digits
    model = _model()
    before_loss, before_accuracy = evaluate_loss_accuracy(model, test_loader)
    history = train(model, train_loader, epochs=4, lr=0.05, seed=0, progress=False)
    after_loss, after_accuracy = evaluate_loss_accuracy(model, test_loader)
    assert len(history["epoch_loss"]) == 4 and history["steps"] == 4 * len(train_loader)
    assert history["epoch_loss"][-1] < 0.8 * history["epoch_loss"][0]
    assert after_loss < before_loss and after_accuracy > max(0.5, before_accuracy)
    assert after_accuracy == evaluate(model, test_loader)
    assert not model.training


def test_same_seed_same_model(digits):
    train_loader = digits[0]
    first, second = _model(), _model()
    h1 = train(first, train_loader, epochs=2, max_steps=7, seed=3, progress=False)
    h2 = train(second, train_loader, epochs=2, max_steps=7, seed=3, progress=False)
    assert h1["steps"] == h2["steps"] == 7 and h1["epoch_loss"] == h2["epoch_loss"]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    third = _model()
    train(third, train_loader, epochs=1, max_steps=7, seed=4, progress=False)
    assert not torch.equal(third.classifier.fc.weight, first.classifier.fc.weight)


def test_cosine_schedule_constant_schedule_and_regularizer():
    torch.manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(4)]
    model = _model()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = sum(m.weight.abs().sum().item() for m in norms)
    history = train(model, data, epochs=2, lr=0.05, schedule="constant", progress=False,
                    regularizer=lambda m: 0.5 * sum(b.weight.abs().sum() for b in norms))
    assert sum(m.weight.abs().sum().item() for m in norms) < 0.5 * before
    assert history["final_lr"] == 0.05
    assert train(model, data, epochs=2, lr=0.05, progress=False)["final_lr"] < 1e-12  # cosine anneals to 0


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"schedule": "linear"}, "schedule"),
    ({"momentum": 1.5}, "momentum"), ({"max_steps": 0}, "max_steps"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(_model(), [(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))], progress=False, **kwargs)


def test_torch_evaluator_honours_max_steps():
    torch.manual_seed(0)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    model = _model()
    evaluator = torch_evaluator(model, data, lr=0.1, eval_loader=data)
    steps = []
    evaluator._init_optimizer_helpers(model)
    evaluator.bind_model(model)
    evaluator.patch_optimizer_step([], [lambda: steps.append(1)])
    weight = model.classifier.fc.weight.detach().clone()
    evaluator.train(max_steps=5)  # crosses an epoch boundary of the 3-batch loader
    accuracy = evaluator.evaluate()
    evaluator.unbind_model()
    assert len(steps) == 5 and not torch.equal(weight, model.classifier.fc.weight)
    assert 0.0 <= accuracy <= 1.0


def test_step_schedule_and_warmup_follow_the_recipe():
    recipe = Recipe(epochs=8, lr=0.1, schedule="step", milestones=(0.5, 0.75), warmup_epochs=1)
    per_epoch, total = 10, 80
    factors = [_lr_factor(recipe, step, total, per_epoch) for step in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[5] == pytest.approx(0.55)   # linear warm-up
    assert factors[10] == pytest.approx(1.0) and factors[39] == pytest.approx(1.0)
    assert factors[40] == pytest.approx(0.1) and factors[60] == pytest.approx(0.01)  # x0.1 at 50% and 75%
    cosine = Recipe(epochs=2, lr=0.1)
    assert _lr_factor(cosine, 0, 20, 10) == 1.0 and _lr_factor(cosine, 10, 20, 10) == pytest.approx(0.5)


def test_crop_flip_augmentation_moves_pixels_but_keeps_content():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 32, 32)
    out = augment_batch(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    # every output image is its input shifted by at most 4 pixels (zeros enter at the border), maybe mirrored
    for i in range(8):
        best = min((out[i, :, 8:24, 8:24] - candidate[:, 8 + dy:24 + dy, 8 + dx:24 + dx]).abs().max().item()
                   for candidate in (images[i], images[i].flip(-1))
                   for dy in range(-4, 5) for dx in range(-4, 5))
        assert best == 0.0
    flipped = sum(torch.equal(augment_batch(images[i:i + 1], padding=0, generator=torch.Generator().manual_seed(i)),
                              images[i:i + 1].flip(-1)) for i in range(40))
    assert 8 < flipped < 32  # about half
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment_batch(torch.rand(3, 32, 32))


def test_auto_augmentation_only_for_cifar_size_inputs():
    cifar, digits = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 8, 8)
    assert _wants_augmentation(Recipe(), cifar) and not _wants_augmentation(Recipe(), digits)
    assert not _wants_augmentation(Recipe(augment="none"), cifar)
    assert _wants_augmentation(Recipe(augment="crop_flip"), digits)


def test_fit_reports_validation_accuracy_each_epoch(digits):
    train_loader, val_loader, _ = digits
    reports = []
    history = fit(_model(), train_loader, Recipe(epochs=2, schedule="step"), val_loader=val_loader,
                  report=reports.append, seed=0, progress=False)
    assert [r["epoch"] for r in reports] == [1, 2] and len(history["val_accuracy"]) == 2
    assert reports[-1]["default"] == history["val_accuracy"][-1] > 0.3
    assert history["loss_change"] is not None


@pytest.mark.parametrize("changes, match", [
    ({"milestones": (0.8, 0.5)}, "milestones"), ({"augment": "mixup"}, "augment"),
    ({"warmup_epochs": 9}, "warmup_epochs"), ({"gamma": 0}, "gamma"), ({"crop_padding": -1}, "crop_padding"),
])
def test_bad_recipes(changes, match):
    with pytest.raises(ValueError, match=match):
        Recipe(epochs=8, **changes)
