//! The catalog the fleet serves: many tools registered concurrently through the admin
//! API, a few agents with grants of their own, and the fleet agent's 50 grants and one
//! fallback strategy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use toolplane_proto::v1 as pb;
use toolplane_tests::grpc::{Admin, http_tool};
use uuid::Uuid;

use crate::sim::Expect;

/// Tools granted to the fleet agent.
pub const GRANTED: usize = 50;
/// Other agents, and the tools each is granted (outside the fleet agent's scope).
const OTHER_AGENTS: usize = 4;
const OTHER_GRANTS: usize = 25;
/// Parallel admin clients registering tools.
const REGISTER_CLIENTS: usize = 8;

pub fn tool_name(i: usize) -> String {
    format!("fleet_tool_{i:06}")
}

/// Tool `i`'s definition: the granted ones call `tool_url`, the rest a closed port.
pub fn tool(i: usize, tool_url: &str) -> pb::Tool {
    let endpoint = if i < GRANTED {
        tool_url
    } else {
        "http://127.0.0.1:9/filler"
    };
    let mut t = http_tool(&tool_name(i), endpoint);
    t.description = format!("Fleet tool {i}: counts the words of a text, one of many in a large catalog");
    t.requirements.as_mut().unwrap().rate_limit_rpm = 1_000_000;
    t
}

/// Registers tools `from..to` with [`REGISTER_CLIENTS`] clients in parallel; their ids
/// in order.
pub async fn register(url: &str, token: &str, from: usize, to: usize, tool_url: &str) -> Vec<Uuid> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut clients = Vec::new();
    for _ in 0..REGISTER_CLIENTS {
        let (next, tool_url) = (next.clone(), tool_url.to_owned());
        let mut admin = Admin::connect(url, token).await;
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return ids;
                }
                let t = admin.register(tool(i, &tool_url)).await.unwrap();
                ids.push((i, t.id.parse::<Uuid>().unwrap()));
            }
        }));
    }
    let mut all = Vec::with_capacity(to - from);
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all.sort_unstable();
    all.into_iter().map(|(_, id)| id).collect()
}

/// The catalog as the bench needs it.
pub struct Catalog {
    pub tools: Vec<Uuid>,
    /// The fleet agent.
    pub fleet: Uuid,
    /// What every fleet sidecar's first snapshot must hold.
    pub must_hold: Vec<Expect>,
}

/// `n` tools, the other agents and their grants, the fleet agent and its grants, and a
/// fallback strategy on its first tool naming a tool outside its grants.
/// `label` starts the line saying how long the registrations took and where.
pub async fn build(url: &str, token: &str, n: usize, tool_url: &str, label: &str) -> Catalog {
    assert!(n >= 2 * GRANTED, "FLEET_TOOLS must be at least {}", 2 * GRANTED);
    let started = Instant::now();
    let tools = register(url, token, 0, n, tool_url).await;
    println!(
        "{label} tools={n} registered_in_s={:.1} clients={REGISTER_CLIENTS}",
        started.elapsed().as_secs_f64()
    );
    let mut admin = Admin::connect(url, token).await;
    for a in 0..OTHER_AGENTS {
        let agent = admin.agent(&format!("team-agent-{a}")).await;
        for g in 0..OTHER_GRANTS {
            let t = (n / 2 + a * OTHER_GRANTS + g) % n;
            admin.grant_full(&agent.id, &tools[t].to_string()).await;
        }
    }
    let fleet = admin.agent("fleet-agent").await;
    let fleet_id: Uuid = fleet.id.parse().unwrap();
    let mut must_hold = Vec::new();
    for t in &tools[..GRANTED] {
        admin.grant_full(&fleet.id, &t.to_string()).await;
        must_hold.push(Expect::Granted {
            agent: fleet_id,
            tool: *t,
        });
    }
    admin
        .registry
        .set_fallback_strategy(pb::SetFallbackStrategyRequest {
            strategy: Some(pb::FallbackStrategy {
                tool_id: tools[0].to_string(),
                fallback_tool_ids: vec![tools[n - 1].to_string()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    must_hold.push(Expect::FallsBack {
        tool: tools[0],
        to: tools[n - 1],
    });
    Catalog {
        tools,
        fleet: fleet_id,
        must_hold,
    }
}
