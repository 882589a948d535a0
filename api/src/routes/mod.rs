pub mod batches;
pub mod jobs;
pub mod meta;
pub mod rerank;
pub mod score;
