//! scorer-protocol
