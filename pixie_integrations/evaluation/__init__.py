"""Evaluation (issue 7): the model card's NDCG method on BEIR/MTEB-format data. Filled in by its own change."""
