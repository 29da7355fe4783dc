"""The math: splitting matrices, their minimum eigenpairs (exact and matrix-free), the splitting indexes
and gradients of every neuron (:func:`~nni_splitting.core.splitting.compute_splitting`)."""
