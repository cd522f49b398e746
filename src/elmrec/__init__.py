"""ELMRec: LLM-based recommendation with whole-word embeddings."""
__version__ = "0.1.0"
