//! Rendezvous benchmark (filled in below).

fn main() {}
