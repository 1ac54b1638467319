"""Data sources: text corpora cut into token contexts (images and synthetic features come later)."""

from mechscope.data.text import Contexts, TextCorpusConfig, build_contexts, read_documents

__all__ = ["Contexts", "TextCorpusConfig", "build_contexts", "read_documents"]
