//! scorer-engine
