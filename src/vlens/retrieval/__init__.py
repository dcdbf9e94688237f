"""Image-text retrieval: dual encoders (CLIP), contrastive training, recall@K, search index."""
