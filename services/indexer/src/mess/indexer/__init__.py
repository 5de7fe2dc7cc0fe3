"""The indexer service: vectors per shard, FAISS builds, snapshot checkpoints."""
