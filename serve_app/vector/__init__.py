"""Retrieval layer: embedder, chunker, vector stores (Qdrant), and their Serve deployments."""
