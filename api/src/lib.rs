//! scorer-api
