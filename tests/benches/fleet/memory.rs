//! A real sidecar's memory when the catalog is huge and its agent uses 50 tools: the
//! release `toolplane-sidecar` against a control plane holding 100 000 tools, after one
//! successful call of each granted tool.

use std::time::{Duration, Instant};

use serde_json::json;
use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, executor, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, sidecar_with, spool_dir};

use crate::catalog::{self, GRANTED};
use crate::{Catalog, rss_mib};

/// Where the control plane of this part keeps its catalog.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The fleet's database, topped up to the catalog size.
    Postgres,
    /// Its embedded in-memory store, the whole catalog registered anew: RegisterTool on
    /// PostgreSQL runs at ~130 tools/s here (8 clients), ~13 minutes for 100 000.
    Memory,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Memory => "memory",
        }
    }
}

/// Tops the catalog up to `total` tools (on PostgreSQL; in memory `cat` already holds
/// them), starts a sidecar, calls each of the fleet agent's tools once through it and
/// prints its RSS.
pub async fn measure(cp: &Proc, cat: &Catalog, total: usize, tool_url: &str, store: Store) {
    let have = cat.tools.len();
    if total > have {
        let started = Instant::now();
        catalog::register(&cp.url(), ADMIN_TOKEN, have, total, tool_url).await;
        println!(
            "sidecar_memory registered {} more tools in {:.1} s (RegisterTool, 8 clients, {})",
            total - have,
            started.elapsed().as_secs_f64(),
            store.name()
        );
    }
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
    let agent_token = admin.token(pb::Role::Agent, &cat.fleet.to_string()).await;
    let started = Instant::now();
    let sc = sidecar_with(cp, &sidecar_token, &spool_dir(), &[]).await;
    let mut ex = executor(&sc.url(), Some(&agent_token)).await;
    for i in 0..GRANTED {
        let name = catalog::tool_name(i);
        // The sidecar serves once its first snapshot is in: retry the first call until then.
        let r = loop {
            let r = ex
                .invoke(invoke_request(&name, &json!({"text": "one two three"})))
                .await;
            match r {
                Ok(r) => break r.into_inner(),
                Err(_) if i == 0 && started.elapsed() < Duration::from_secs(300) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("invoke {name}: {e}\n{}", sc.logs()),
            }
        };
        let result = r.result.unwrap();
        assert_eq!(
            result.status,
            pb::ToolExecutionStatus::Success as i32,
            "{name}: {result:?}"
        );
    }
    let served_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "sidecar_memory catalog={total} granted={GRANTED} rss_mib={:.1}",
        rss_mib(sc.pid())
    );
    println!(
        "sidecar_memory detail start_to_{GRANTED}_calls_ms={} control_plane_store={}",
        served_after.as_millis(),
        store.name()
    );
}
