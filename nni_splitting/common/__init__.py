"""What every layer uses and that knows nothing of splitting: defaults, import paths, atomic files,
data sets, the training loop, and the one place that touches NNI's private attributes (``nni_compat``)."""
