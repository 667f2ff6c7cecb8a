//! Virtual addresses and ports (`spec/wire.md` §1).
