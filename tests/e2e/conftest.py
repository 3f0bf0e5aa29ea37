"""The end-to-end tests' fixtures: the integration tests' own (the real services of the local
stack; a missing one is a failure, never a skip)."""

from tests.integration.conftest import *  # noqa: F403
