"""Knowledge pathway: LLM-written texts → vectors → extra feature fields of a backbone.

    encoder.py   TextEncoder: any HF encoder (embedded MiniLM by default), mean-pooled, with a
                 persistent per-text vector cache (sqlite, one row per text hash)
    index.py     faiss over those vectors: near-duplicate filtering within a group
                 (drop_near_duplicates) and exact cosine retrieval (VectorIndex)
    adapters.py  vectors → D-dim fields: TrackRec's MLP connector, KAR's hybrid-expert adaptor

Submodules are not imported here, so importing an adapter does not pull in faiss or transformers.
"""
