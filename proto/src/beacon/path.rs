//! Per-peer path selection (`spec/beacon.md` §5).
