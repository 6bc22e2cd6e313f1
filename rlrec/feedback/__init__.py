"""Feedback strategies: how N sampled texts per user are scored (the second arrow of the loop).
`validator` (TrackRec), `recommender` (DPO4Rec), `judge` (RecLAIF). See base.py for the protocol."""
