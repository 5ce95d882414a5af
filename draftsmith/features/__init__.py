"""EAGLE-3 feature store: codecs, the store reader, and the hidden-states stage."""

from draftsmith.features.store import FeatureStore

__all__ = ["FeatureStore"]
