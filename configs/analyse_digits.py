"""Flatness analysis of digits runs: Hessian trace, top eigenvalues, spectral density and
loss-landscape slices, side by side. Pass the training workdirs to compare:

    python -m jaxquant.main --config configs/analyse_digits.py --workdir runs/analysis \
        --config.checkpoints=runs/quickstart/lsq_w4a4,runs/quickstart/lsq_w2a2
"""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "analyse_digits"
    config.mode = "analyse"
    config.curvature.batch_size = 256
    config.curvature.num_batches = 1
    config.curvature.num_probes = 100
    config.curvature.tol = 1e-3
    config.curvature.lanczos_iterations = 40
    config.curvature.density_runs = 2
    return config
