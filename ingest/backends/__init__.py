"""The stores a ragtune collection can live in, behind one interface (`base.VectorStore`)."""
