//! Node-side beacon client (`spec/beacon.md` §4).
