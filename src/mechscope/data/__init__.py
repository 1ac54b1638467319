"""Data sources: text corpora cut into token contexts, and real image sets (``mechscope.data.images``)."""

from mechscope.data.text import Contexts, TextCorpusConfig, build_contexts, read_documents

__all__ = ["Contexts", "TextCorpusConfig", "build_contexts", "read_documents"]
