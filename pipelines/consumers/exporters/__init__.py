"""Training-format exports of one dataset version: gRefCOCO, LISA (ReasonSeg layout), PSALM.

Each format module has `write(samples, indexes, ctx) -> summary`; pipelines/cli/export.py is the CLI.
"""

from typing import Any, Callable

from pipelines.consumers.exporters import grefcoco, lisa, psalm

Writer = Callable[..., dict[str, Any]]

WRITERS: dict[str, Writer] = {"grefcoco": grefcoco.write, "lisa": lisa.write, "psalm": psalm.write}

__all__ = ["WRITERS", "Writer"]
