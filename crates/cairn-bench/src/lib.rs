//! cairn-bench's workload building blocks, shared with the side-by-side comparison crate (`compare/`)
//! so that every engine sees byte-identical keys and values and is measured and printed the same way.
// A benchmark library: failing loudly on a broken invariant is the right response, not an error path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bank;
pub mod data;
pub mod histogram;
pub mod kv;
pub mod report;
pub mod rng;
pub mod run;
