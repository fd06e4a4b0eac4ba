"""Pre-training data: sources and collections, manifest, fingerprint, plan, preprocessing, crop loader."""
