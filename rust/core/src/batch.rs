//! Batches: see module docs (written by the batch owner).
