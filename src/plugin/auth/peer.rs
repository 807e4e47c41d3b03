//! Unix peer credentials: the kernel tells the uid and gid of the process at the other end of a unix
//! socket (`SO_PEERCRED`), which no client can forge.

use std::collections::HashMap;
use std::sync::Arc;

use hyper::HeaderMap;

use super::{AuthError, Authenticator};
use crate::plugin::Identity;
use crate::transport::{PeerAddr, PeerInfo};

/// Maps uids (and, failing that, gids) to identities.
pub struct UnixPeerAuth {
    name: String,
    uids: HashMap<u32, Arc<str>>,
    gids: HashMap<u32, Arc<str>>,
}

impl UnixPeerAuth {
    pub fn new(name: &str, uids: HashMap<u32, String>, gids: HashMap<u32, String>) -> Self {
        let arc = |m: HashMap<u32, String>| m.into_iter().map(|(k, v)| (k, Arc::from(v))).collect();
        UnixPeerAuth { name: name.to_owned(), uids: arc(uids), gids: arc(gids) }
    }
}

impl Authenticator for UnixPeerAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn authenticate(&self, peer: &PeerInfo, _: &HeaderMap) -> Result<Option<Identity>, AuthError> {
        let PeerAddr::Unix { uid, gid, .. } = peer.addr else { return Ok(None) };
        let name = self.uids.get(&uid).or_else(|| self.gids.get(&gid));
        Ok(name.map(|n| Identity { name: n.clone(), via: "unix-peer" }))
    }
}
