"""The tests' tiny config (``conftest.tiny_config``) as a config file for CLI subprocess tests.

``python -m jaxquant.main --config tests/cli_config.py --workdir DIR --config.<field>=<value>``
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config():
    return tiny_config()
