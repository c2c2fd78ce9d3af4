//! Gauges read from live state at every `/metrics` scrape: the database pool and how
//! far behind each connected sidecar is.

use std::sync::{Arc, Weak};
use std::time::Instant;

use toolplane_runtime::metrics as m;

use crate::services::sync_fleet::Fleet;
use crate::state::AppState;

/// Exports the pool gauges (when the store has a pool) and the per-sidecar lag of
/// `fleet`. Holds neither: a server that stopped leaves its series behind no more.
pub fn export(state: &Arc<AppState>, fleet: &Arc<Fleet>) {
    let (state, fleet): (Weak<AppState>, Weak<Fleet>) = (Arc::downgrade(state), Arc::downgrade(fleet));
    // The gauge exists from the start, so "no sidecar connected" is a 0, not a gap.
    metrics::gauge!(m::SYNC_SESSIONS).increment(0.0);
    metrics::describe_gauge!(m::SYNC_SESSIONS, "Sidecar sync sessions open on this replica");
    metrics::describe_gauge!(m::DB_POOL_CONNECTIONS, "Database connections open in the pool");
    metrics::describe_gauge!(m::DB_POOL_AVAILABLE, "Open database connections idle in the pool");
    metrics::describe_gauge!(m::DB_POOL_WAITING, "Requests waiting for a pooled database connection");
    metrics::describe_gauge!(m::DB_POOL_MAX, "The database pool's maximum size");
    toolplane_runtime::metrics::on_scrape(move |out| {
        let Some(state) = state.upgrade() else {
            return;
        };
        if let Some(pool) = state.store.pool_status() {
            metrics::gauge!(m::DB_POOL_MAX).set(pool.max as f64);
            metrics::gauge!(m::DB_POOL_CONNECTIONS).set(pool.size as f64);
            metrics::gauge!(m::DB_POOL_AVAILABLE).set(pool.available as f64);
            metrics::gauge!(m::DB_POOL_WAITING).set(pool.waiting as f64);
        }
        if let Some(fleet) = fleet.upgrade() {
            let current = *state.subscribe().borrow();
            fleet.render(current, Instant::now(), out);
        }
    });
}
