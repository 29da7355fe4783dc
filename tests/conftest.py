"""Suite-wide settings: one intra-op thread.

On a small shared machine torch's default thread pool spins against other processes and makes small
convolutions ~100x slower; the tests use tiny models, so one thread is the fast choice.
"""
import torch

torch.set_num_threads(1)
