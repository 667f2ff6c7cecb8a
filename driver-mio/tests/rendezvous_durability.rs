//! `kill -9` during a burst of registrations loses nothing that was
//! acknowledged.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Rv, STEP, ident};

#[test]
fn acknowledged_registrations_survive_kill_9() {
    for be in common::Backend::all() {
        eprintln!("store backend: {}", be.name());
        let store = be.store("s");
        let mut rv = Rv::start(&store, &[]);
        let acked: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3u32)
            .map(|w| {
                let acked = acked.clone();
                let stop = stop.clone();
                let addr = rv.registry;
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let deadline = std::time::Instant::now() + STEP;
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                            break;
                        }
                        let seed = w * 1_000_000 + i;
                        match c.try_register(seed) {
                            Ok(id) => acked.lock().unwrap().push((seed, id)),
                            Err(_) => break, // the server died mid-request
                        }
                    }
                })
            })
            .collect();
        // Let the burst run until a good number of replies came back, then kill.
        let deadline = std::time::Instant::now() + STEP;
        while acked.lock().unwrap().len() < 200 {
            assert!(std::time::Instant::now() < deadline, "burst too slow");
            std::thread::sleep(Duration::from_millis(5));
        }
        rv.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 200);

        let rv2 = Rv::start(&store, &[]);
        let mut c = Client::connect(rv2.registry);
        for (seed, id) in &acked {
            let got = c
                .lookup(*id)
                .unwrap_or_else(|| panic!("acknowledged node {id} lost"));
            assert_eq!(got.public_key, ident(*seed).public_key_b64(), "node {id}");
            // Re-registering the same key gets the same node ID back.
        }
        let (seed, id) = acked[acked.len() / 2];
        assert_eq!(c.register(seed), id);
    }
}
