"""Feedback strategies: how N sampled texts per user are scored (the second arrow of the loop).
`validator` and `llm_validator` (TrackRec), `recommender` (DPO4Rec), `judge` (RecLAIF); the
protocol is in base.py, cross-fitting over user folds in crossfit.py."""
