"""The errors a conversion can end with (all shown to users as ``title: message``)."""

from __future__ import annotations

from pipelines.errors import InputError, RepopilotError


class ModelInputError(InputError):
    """The model directory cannot be converted as it is (not CodeGen, missing files, wrong settings)."""

    title = "Cannot convert this model"


class VerificationError(RepopilotError):
    """The converted model does not compute what the source model computes; nothing was put in place."""

    title = "Conversion failed verification"


class DamagedOutputError(RepopilotError):
    """A converted model directory is incomplete or its files changed since it was written."""

    title = "Converted model is damaged"


def problems_message(problems: list[str], limit: int = 12) -> str:
    """Join many problems into one message, listing at most ``limit`` of them."""
    shown = problems[:limit]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(shown) + more
