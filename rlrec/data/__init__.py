"""Data layer: loaders → canonical schema (schema.py); labels, splits, histories (splits.py);
FeatureSpec + prepared data (features.py); CTR samples (ctr.py); re-rank lists (rerank.py);
prompts (prompts.py); the DataModule (datamodule.py)."""

from rlrec.data.schema import DataError, RecData

__all__ = ["DataError", "RecData"]
