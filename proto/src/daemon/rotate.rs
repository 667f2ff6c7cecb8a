//! Key rotation (IPC `0x25`, `spec/daemon.md` §2.9): owns the one rotation
//! in progress, from the new key's generation to the reply.
//!
//! Order, chosen so that no crash or failed write loses the key the
//! registry holds:
//! 1. a fresh identity is drawn from the node's driver-seeded RNG and
//!    saved as `<identity>.next` ([`DiskWrite::IdentityNext`]); a failed
//!    write ends the rotation with nothing changed;
//! 2. `rotate_key`, signed by the current key, goes to the registry
//!    ([`RegistryClient::rotate_key`] swaps the signing key when it is
//!    accepted);
//! 3. accepted: the node, the trust store and the daemon sign with the new
//!    key at once (the node tells its peers, `spec/crypto.md` §2.9), then
//!    the identity file is replaced ([`DiskWrite::IdentityCommit`]), which
//!    also removes `.next`; the client is answered when that write is
//!    done. Refused: `.next` is removed. No answer (connection lost twice):
//!    `.next` stays and the registry client keeps the new key as its
//!    fallback, so the next registration (refused for the old key if the
//!    rotation did happen) adopts it.
//!
//! A restart with `.next` on disk does the same: the daemon registers
//! with the identity file's key and adopts `.next` only if the registry
//! answers that this key was retired.

use rand_core::{CryptoRng, RngCore, SeedableRng};

use super::calls::Purpose;
use super::output::{DiskWrite, WorkToken};
use super::{ClientId, Daemon};
use crate::crypto::identity::Identity;
use crate::crypto::provider::CryptoProvider;
use crate::registry::auth::Identity as RegistryIdentity;
use crate::registry::client::Response;
use crate::time::Instant;
use crate::wire::ipc::IpcMessage;

/// Where the rotation in progress stands.
#[derive(Debug)]
pub(crate) enum Stage {
    /// `<identity>.next` is being written.
    SavingNext(WorkToken),
    /// `rotate_key` is at the registry.
    Calling,
    /// The registry accepted; the identity file is being replaced. The
    /// reply waits for it.
    Committing(WorkToken, String),
}

/// The rotation in progress.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// Who asked (`None` once it went away).
    pub client: Option<ClientId>,
    /// The new identity.
    pub new: Identity,
    /// Step.
    pub stage: Stage,
}

/// What the daemon knows about a new identity that may be the registry's
/// (a restart with `<identity>.next`, or a rotation without an answer).
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// The rotation in progress.
    pub rotation: Option<Rotation>,
    /// `.next` exists on disk and holds this identity.
    pub next_on_disk: Option<Identity>,
    /// Rotations completed (Info `key_rotations`).
    pub rotations: u64,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// IPC `RotateKey`: starts a rotation (module docs).
    pub(crate) fn ipc_rotate_key(&mut self, now: Instant, client: ClientId) {
        let refuse =
            |d: &mut Self, why: &str| d.reply_error(now, client, &format!("rotate_key: {why}"));
        if self.registry.is_none() {
            return refuse(self, "this daemon runs without a registry");
        }
        if !self.registry.as_ref().is_some_and(|r| r.is_registered()) {
            return refuse(
                self,
                "not registered yet (wait for the registry, then retry)",
            );
        }
        if self.keys.rotation.is_some() {
            return refuse(self, "a key rotation is already in progress");
        }
        let Some(node) = self.life.node_mut() else {
            return refuse(self, "node not running");
        };
        let new = node.new_identity();
        if self.identity_persisted {
            let token = self.disk(DiskWrite::IdentityNext(new.clone()));
            self.keys.rotation = Some(Rotation {
                client: Some(client),
                new,
                stage: Stage::SavingNext(token),
            });
        } else {
            self.keys.rotation = Some(Rotation {
                client: Some(client),
                new,
                stage: Stage::Calling,
            });
            self.rotation_call(now);
        }
    }

    /// Sends `rotate_key` for the rotation in progress.
    fn rotation_call(&mut self, now: Instant) {
        let Some(rot) = self.keys.rotation.as_mut() else {
            return;
        };
        rot.stage = Stage::Calling;
        let new = RegistryIdentity::from_seed(rot.new.seed());
        let started = self.registry.as_mut().map(|r| r.rotate_key(now, new));
        match started {
            Some(Ok(id)) => self.calls.record(id, Purpose::Rotate),
            Some(Err(e)) => self.rotation_failed(now, &format!("registry: {e}"), true),
            None => self.rotation_failed(now, "no registry", true),
        }
    }

    /// The rotation ends without a new key: `definite` when the registry
    /// certainly kept the old one (then `.next` is removed).
    fn rotation_failed(&mut self, now: Instant, why: &str, definite: bool) {
        let Some(rot) = self.keys.rotation.take() else {
            return;
        };
        if self.identity_persisted {
            if definite {
                self.disk(DiskWrite::IdentityNextDiscard);
            } else {
                self.keys.next_on_disk = Some(rot.new.clone());
            }
        }
        if !definite {
            // The registry may hold the new key: a refused registration
            // with the old one adopts it.
            if let Some(r) = self.registry.as_mut() {
                r.set_fallback_identity(Some(RegistryIdentity::from_seed(rot.new.seed())));
            }
            self.diagnostics_push(format!(
                "key rotation: no answer from the registry ({why}); the new key is kept as a fallback"
            ));
        }
        if let Some(c) = rot.client {
            self.reply_error(now, c, &format!("rotate_key: {why}"));
        }
    }

    /// A disk write finished: returns `true` when it was the rotation's.
    pub(crate) fn rotation_disk_done(
        &mut self,
        now: Instant,
        token: WorkToken,
        outcome: &Result<(), String>,
    ) -> bool {
        let stage = match self.keys.rotation.as_ref().map(|r| &r.stage) {
            Some(Stage::SavingNext(t)) if *t == token => 1,
            Some(Stage::Committing(t, _)) if *t == token => 2,
            _ => return false,
        };
        if stage == 1 {
            match outcome {
                Ok(()) => self.rotation_call(now),
                Err(e) => {
                    let why = format!("could not save the new key ({e}); nothing changed");
                    // Nothing reached the registry; a partial `.next` is
                    // removed by the driver's atomic write.
                    if let Some(rot) = self.keys.rotation.take() {
                        if let Some(c) = rot.client {
                            self.reply_error(now, c, &format!("rotate_key: {why}"));
                        }
                    }
                }
            }
            return true;
        }
        let Some(rot) = self.keys.rotation.take() else {
            return true;
        };
        let Stage::Committing(_, reply) = rot.stage else {
            return true;
        };
        let reply = match outcome {
            Ok(()) => {
                self.keys.next_on_disk = None;
                reply
            }
            Err(e) => {
                // The registry and this daemon use the new key; it is
                // still in `.next`, which a restart adopts (module docs).
                self.keys.next_on_disk = Some(rot.new.clone());
                self.diagnostics_push(format!(
                    "key rotation: identity file not replaced ({e}); the new key stays in the .next file"
                ));
                add_fields(
                    &reply,
                    &[
                        ("persisted", serde_json::Value::Bool(false)),
                        (
                            "warning",
                            serde_json::Value::String(format!(
                                "identity file not replaced ({e}); the new key is kept in the .next file and adopted at the next start"
                            )),
                        ),
                    ],
                )
            }
        };
        if let Some(c) = rot.client {
            self.reply_msg(now, c, &IpcMessage::RotateKeyOk(&reply));
        }
        true
    }

    /// The registry's answer to `rotate_key`.
    pub(crate) fn on_rotate_answer(&mut self, now: Instant, result: Result<Response, String>) {
        match result {
            Ok(resp @ Response::RotateKeyOk { .. }) => {
                let Some(new) = self.keys.rotation.as_ref().map(|r| r.new.clone()) else {
                    return;
                };
                self.adopt_identity(now, &new);
                let json = crate::registry::codec::encode_response(&resp)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let json = add_fields(&json, &[("persisted", serde_json::Value::Bool(true))]);
                if self.identity_persisted {
                    let token = self.disk(DiskWrite::IdentityCommit(new));
                    if let Some(rot) = self.keys.rotation.as_mut() {
                        rot.stage = Stage::Committing(token, json);
                    }
                } else if let Some(rot) = self.keys.rotation.take() {
                    let json = add_fields(&json, &[("persisted", serde_json::Value::Bool(false))]);
                    if let Some(c) = rot.client {
                        self.reply_msg(now, c, &IpcMessage::RotateKeyOk(&json));
                    }
                }
            }
            Ok(_) => self.rotation_failed(now, "registry: unexpected reply", true),
            Err(e) => {
                // "request failed" (the connection broke around the retry
                // too) and a lost answer leave the outcome unknown.
                let unknown = e == "request failed" || e.contains("answer lost");
                self.rotation_failed(now, &format!("registry: {e}"), !unknown);
            }
        }
    }

    /// From now on the node, the trust store and the daemon use `new`
    /// (the registry already does).
    pub(crate) fn adopt_identity(&mut self, now: Instant, new: &Identity) {
        self.identity = new.clone();
        self.keys.rotations += 1;
        if let Some(t) = self.life.trust_mut() {
            t.set_identity(new);
        }
        if let Some(n) = self.life.node_mut() {
            n.set_identity(now, new);
        }
        self.webhook_event(
            now,
            "node.key_rotated",
            serde_json::json!({"public_key": crate::registry::auth::encode_public_key(new.public())}),
        );
    }

    /// The registry client adopted the fallback key (the registry said the
    /// old one was retired): use it and make it the identity file.
    pub(crate) fn on_identity_adopted(&mut self, now: Instant, public_key: &str) {
        let candidate = self
            .keys
            .rotation
            .as_ref()
            .map(|r| r.new.clone())
            .into_iter()
            .chain(self.keys.next_on_disk.clone())
            .find(|i| crate::registry::auth::encode_public_key(i.public()) == public_key);
        let Some(new) = candidate else {
            return;
        };
        self.diagnostics_push(format!(
            "key rotation: the registry holds the new key {public_key}; adopted it"
        ));
        self.adopt_identity(now, &new);
        self.keys.next_on_disk = None;
        if self.identity_persisted {
            self.disk(DiskWrite::IdentityCommit(new));
        }
    }

    /// Registered with the current key: a `.next` left by an unfinished
    /// rotation that the registry never applied is removed.
    pub(crate) fn rotation_on_registered(&mut self) {
        let current = self.registry.as_ref().map(|r| r.public_key_b64());
        let ours = crate::registry::auth::encode_public_key(self.identity.public());
        if self.keys.rotation.is_none()
            && self.keys.next_on_disk.is_some()
            && current.as_deref() == Some(ours.as_str())
        {
            self.keys.next_on_disk = None;
            if self.identity_persisted {
                self.disk(DiskWrite::IdentityNextDiscard);
            }
        }
    }

    /// IPC client `client` went away: a rotation still completes, unanswered.
    pub(crate) fn rotation_forget_client(&mut self, client: ClientId) {
        if let Some(r) = self.keys.rotation.as_mut() {
            if r.client == Some(client) {
                r.client = None;
            }
        }
    }
}

/// `json` (an object) with `fields` added.
fn add_fields(json: &str, fields: &[(&str, serde_json::Value)]) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut m)) => {
            for (k, v) in fields {
                m.insert((*k).to_owned(), v.clone());
            }
            serde_json::Value::Object(m).to_string()
        }
        _ => json.to_owned(),
    }
}
