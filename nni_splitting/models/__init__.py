"""Width-configurable starting architectures for splitting steepest descent.

Each model is built from per-layer widths, so a grown network can be rebuilt
from ``current_widths(model)`` alone; ``model.width_layers()`` names (as in
``named_modules()``) the layers whose output sizes are the widths.  Models use
standard modules (plus :class:`RBFLayer`) and trace with ``torch.fx``.  CNNs are
``features`` (named blocks: :class:`ConvBNAct` with ``conv``/``bn``/``act``, or
depthwise-separable blocks with ``dw``/``pw``) then ``classifier`` (``pool``,
``flatten``, ``dropout``, ``fc``).  When a width layer grows, its consumers (and
the next depthwise conv) must grow too; that is up to the splitting code.

Modules: ``_base`` (activations, ConvBNAct, :class:`WidthModel`), ``_cnn`` (MobileNetV1, VGG19-BN,
DS-CNN, SmallCNN), ``_cifar`` (the small CIFAR families of the strong baselines: MobileNetCifar,
ResNet20), ``_small`` (MLP, RBF network), ``_registry`` (:data:`MODELS`, :func:`build_model`
and the widths helpers); everything public is re-exported here.
"""
from nni_splitting.models._base import ACTIVATIONS, ConvBNAct, WidthModel, check_widths, make_activation
from nni_splitting.models._cifar import MobileNetCifar, ResNet20
from nni_splitting.models._cnn import DSCNN, VGG19BN, MobileNetV1, SmallCNN
from nni_splitting.models._registry import MODELS, build_model, model_class, current_widths, default_widths, rebuild, scale_widths, widths_of
from nni_splitting.models._small import MLP, RBFLayer, RBFNet

__all__ = [
    "ACTIVATIONS", "MODELS", "ConvBNAct", "WidthModel", "check_widths", "MobileNetV1", "MobileNetCifar", "ResNet20", "VGG19BN", "DSCNN",
    "SmallCNN", "MLP", "RBFLayer", "RBFNet", "make_activation", "current_widths", "widths_of", "rebuild",
    "default_widths", "scale_widths", "build_model", "model_class",
]
