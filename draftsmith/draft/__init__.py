"""The EAGLE-3 draft model and its config.json ✱."""

from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft

__all__ = ["Eagle3Config", "Eagle3Draft"]
