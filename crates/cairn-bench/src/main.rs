//! cairn-bench: db_bench-style workloads.

fn main() {}
