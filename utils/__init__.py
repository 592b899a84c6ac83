"""The reference's `protean.utils` import paths that its snippets use."""
