"""The shared defaults (see ``jaxquant/defaults.py``), runnable as a plain FP run on digits."""

from jaxquant.defaults import get_config  # noqa: F401
