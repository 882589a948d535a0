pub mod jobs;
pub mod meta;
pub mod score;
