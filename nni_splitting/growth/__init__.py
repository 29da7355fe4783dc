"""Network surgery and growth: splitting and new-neuron surgery, offspring, growth strategies (S2D, S3D,
Firefly), selection rules and the energy-aware LP, parameter / FLOPs costs, checkpoints of grown networks,
and :class:`~nni_splitting.growth.grower.SplittingGrower` (growth without NNI's tuner)."""
