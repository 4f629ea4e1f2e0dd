//! The `cairn` binary. The server and CLI arrive with the server issue; until then it says so.

fn main() {
    eprintln!("cairn: the server is not built yet; run `cargo run -p cairn-engine --example quickstart`");
    std::process::exit(2);
}
