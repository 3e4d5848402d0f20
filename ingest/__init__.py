"""Ingestion: files to chunks to embeddings to Qdrant points, plus retrieval over them."""
