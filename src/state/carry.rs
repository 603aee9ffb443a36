//! What a rebuilt state takes over from the running one, by identity: a server's live part
//! by (pool name, address, port), client-IP tables by name, server-cookie tables by
//! (service, cookie name). Positions never match things up: a server moved within its pool's
//! list, or a pool added before another, keeps its health, counts and tables.

use std::collections::HashMap;
use std::sync::Arc;

use super::State;
use crate::balance::{ServerLive, StickyTable};
use crate::config::ServerId;

#[derive(Default)]
pub struct Carry {
    servers: HashMap<(String, ServerId), Arc<ServerLive>>,
    sticky: HashMap<String, Arc<StickyTable>>,
    cookie: HashMap<(String, String), Arc<StickyTable<String>>>,
}

impl Carry {
    /// The live parts of `state`, to hand to `State::rebuild`.
    pub fn from_state(state: &State) -> Carry {
        let servers = state
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(move |s| ((p.name.clone(), s.config.id()), s.live.clone())))
            .collect();
        Carry {
            servers,
            sticky: state.sticky_tables.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cookie: state.cookie_tables.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub fn server(&self, pool: &str, id: ServerId) -> Option<Arc<ServerLive>> {
        self.servers.get(&(pool.to_string(), id)).cloned()
    }

    pub fn sticky_table(&self, name: &str) -> Option<Arc<StickyTable>> {
        self.sticky.get(name).cloned()
    }

    pub fn cookie_table(&self, key: &(String, String)) -> Option<Arc<StickyTable<String>>> {
        self.cookie.get(key).cloned()
    }
}
