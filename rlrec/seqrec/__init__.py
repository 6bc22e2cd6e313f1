"""Non-LLM baselines the papers compare against: SASRec for next-item recommendation, and BM25 /
dense retrieval for the query (ESCI) setting."""

from rlrec.seqrec.retrieval import BM25Retriever, DenseRetriever
from rlrec.seqrec.sasrec import SASRec, SASRecTask, fit_sasrec, rank_candidates

__all__ = ["BM25Retriever", "DenseRetriever", "SASRec", "SASRecTask", "fit_sasrec", "rank_candidates"]
