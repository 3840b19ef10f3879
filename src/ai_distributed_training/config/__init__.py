"""The one typed, validated config: the settings model, the model and data specs, YAML run files.

Every default lives in :mod:`.settings`; :mod:`.runfile` reads the CLI's YAML run files and
``--set`` overrides into the same names.
"""

from .settings import (
    FaultSpec,
    ModelSpec,
    StrictModel,
    SyntheticDataSpec,
    TokenDataSpec,
    TrainingSettings,
    settings_as_plain_data,
    settings_markdown_table,
    validate,
)

__all__ = [
    "FaultSpec",
    "ModelSpec",
    "StrictModel",
    "SyntheticDataSpec",
    "TokenDataSpec",
    "TrainingSettings",
    "settings_as_plain_data",
    "settings_markdown_table",
    "validate",
]
