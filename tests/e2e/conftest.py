"""The end-to-end suite runs on the same real stack, with the integration suite's fixtures."""

from tests.integration.conftest import api, brokers, kubeconfig, names, procs  # noqa: F401
