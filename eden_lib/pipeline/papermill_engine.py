"""The papermill engine every DVC stage runs its notebook with (``papermill --engine eden``).

papermill's own nbclient engine, except that the kernel is stopped at once when the last cell has finished instead
of being asked to exit: a graceful exit of a kernel that imported torch and MONAI takes about 2.7 s (module
teardown), paid once per stage (22 stages in the default study). Nothing is lost by it: every cell has finished and
its outputs are in the notebook, and the study's files are written and closed by the cells themselves.
Registered under the ``papermill.engine`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

from papermill.engines import NBClientEngine


class ImmediateShutdownEngine(NBClientEngine):
    """nbclient execution with ``shutdown_kernel="immediate"``."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        return super().execute_managed_notebook(nb_man, kernel_name, **{**kwargs, "shutdown_kernel": "immediate"})
