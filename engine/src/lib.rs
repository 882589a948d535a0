//! The scoring engine: PJRT plugin loading, a StableHLO builder, decoder prefill programs,
//! GGUF and safetensors weights, the tokenizer, and `/v1/score` semantics on top. Usable alone
//! (tests, benches, bulk) or behind the service through [`runtime::Engine`]'s `ScoreBackend`.
pub mod chat_template;
pub mod coalesce;
pub mod frontend;
pub mod hlo;
pub mod home;
pub mod model;
pub mod packing;
pub mod pjrt;
pub mod prefix_cache;
pub mod radix;
pub mod rerank_template;
pub mod runtime;
pub mod scoring;
pub mod tokenizer;
pub mod weights;
