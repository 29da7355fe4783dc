"""Reproductions of the experiments of Liu, Wu & Wang (NeurIPS 2019) with the product's API.

* :mod:`.neurons`: splitting matrices of custom neurons (RBF units, prototypes) by autograd (Definition 2.1),
  and :class:`~.neurons.CustomNeuronHandler`, the layer handler base with which :mod:`.rbf_toy`
  (``RBFLayer``) and :mod:`.prototype` (``PrototypeLayer``) register their neurons, so the product's
  surgery (:func:`~nni_splitting.growth.surgery.split_group`, :func:`~nni_splitting.apply_splits`) splits them.
* :mod:`.rbf_toy`: Fig. 1, a 1-D RBF network grown from one neuron, against random splitting, new
  neurons, gradient boosting and training from scratch.
* :mod:`.prototype`: Fig. 2, the prototype network of Li et al. (2018) on MNIST, grown from one
  prototype; the evolutionary tree and splitting index vs loss decrease.
* :mod:`.speech` and :mod:`.kws`: Table 1, keyword spotting on Speech Commands: log-mel features with
  numpy/torch STFT, speaker-disjoint splits, a DS-CNN grown by :class:`~nni_splitting.growth.grower.SplittingGrower`
  vs network slimming (Bn-prune) and NNI's ``SlimPruner``.
* :mod:`.figures`: the PNG figures.

Fig. 3 (CIFAR-10) is the comparison's job (``nni_splitting.baselines``). The scripts are in
``experiments/paper/``; the results are in ``docs/paper.md``. Importing this package does no work.
"""
from nni_splitting.paper.neurons import CustomNeuronHandler, custom_group, custom_layer_splitting, custom_splitting_matrices

__all__ = ["custom_splitting_matrices", "custom_layer_splitting", "custom_group", "CustomNeuronHandler"]
