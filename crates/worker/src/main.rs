//! `hodei-worker`: the small static binary that goes into worker images.

fn main() {
    println!("hodei-worker {}", env!("CARGO_PKG_VERSION"));
}
