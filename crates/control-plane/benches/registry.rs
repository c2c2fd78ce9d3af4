//! `make bench-registry`: `ListTools` filtered by capability (first page of 100) and
//! `GetTool` by name, through the real gRPC server, with 100 000 tools on PostgreSQL.
//! Prints one line per operation:
//! `registry op=<op> tools=100000 p50_us=<x> p99_us=<y>`.

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;
use toolplane_control_plane::config::Config;
use toolplane_control_plane::server;
use toolplane_control_plane::storage::{PostgresStore, Store};
use toolplane_core::client::Bearer;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::tool_registry_client::ToolRegistryClient;

const TOOLS: usize = 100_000;
const ADMIN: &str = "tpk_bench_admin_0123456789abcdef0123456789abcdef";
const CAPABILITIES: [&str; 7] = [
    "search",
    "retrieve",
    "analyze",
    "transform",
    "generate",
    "execute",
    "integrate",
];

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_micros()
}

fn report(op: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "registry op={op} tools={TOOLS} p50_us={} p99_us={}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99)
    );
}

/// Bulk-loads the catalog in SQL: the benchmark measures reads, and 100k single
/// registrations would take minutes.
async fn seed(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "INSERT INTO tools (id, name, category, description, version, input_schema, output_schema, examples, \
               capabilities, auth_type, rate_limit_rpm, timeout_ms, required_skills, data_sensitivity, provider, \
               endpoint, protocol, reliability_score, average_latency_ms, cost_per_call, enabled, side_effects, \
               idempotent, cacheable, cache_ttl_seconds, remote_name, created_at, updated_at) \
             SELECT gen_random_uuid(), 'tool_' || lpad(i::text, 6, '0'), \
               (ARRAY['web_search','data_retrieval','analysis','communication','integration'])[1 + i % 5], \
               'Benchmark tool number ' || i, 1, \
               '{{\"type\":\"object\",\"properties\":{{\"q\":{{\"type\":\"string\"}}}}}}', 'null', '[]', \
               CASE WHEN i % 1000 = 0 THEN ARRAY['rare'] \
                    ELSE ARRAY[(ARRAY{caps})[1 + i % 7], (ARRAY{caps})[1 + (i * 3 + 1) % 7]] END, \
               'none', 0, 5000, '{{}}', 'internal', 'bench', 'http://127.0.0.1:9/t', 'http', 0.9, 20, 0.001, \
               true, 'none', true, false, 0, '', now(), now() \
             FROM generate_series(1, {TOOLS}) AS i; \
             INSERT INTO tool_versions (tool_id, version, spec, created_at) \
               SELECT id, 1, jsonb_build_object('name', name), now() FROM tools; \
             ANALYZE tools;",
            caps = format!(
                "[{}]",
                CAPABILITIES
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        ))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url =
        std::env::var("TOOLPLANE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (admin, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
    tokio::spawn(conn);
    let db = format!("tp_bench_{}", uuid::Uuid::new_v4().simple());
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    let url = format!(
        "{}/{db}",
        admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b)
    );
    let result = run(&url).await;
    admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    result
}

async fn run(url: &str) -> anyhow::Result<()> {
    let store = PostgresStore::connect(url, 8).await?;
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    let started = Instant::now();
    seed(&client).await?;
    eprintln!("seeded {TOOLS} tools in {:?}", started.elapsed());
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);

    let config = Config::try_parse_from([
        "bench",
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        ADMIN,
        "--database-url",
        url,
    ])?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { server::serve(&config, store, listener, std::future::pending()).await });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut registry = ToolRegistryClient::with_interceptor(channel, Bearer::new(Some(ADMIN)).unwrap_or_default());

    let list = |capability: &'static str| pb::ListToolsRequest {
        capability: capability.to_owned(),
        page_size: 100,
        ..Default::default()
    };
    for (op, capability) in [("list_by_capability", "search"), ("list_by_rare_capability", "rare")] {
        for _ in 0..50 {
            registry.list_tools(list(capability)).await?;
        }
        let mut samples = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            let page = registry.list_tools(list(capability)).await?.into_inner();
            samples.push(t.elapsed());
            assert_eq!(page.tools.len(), 100);
        }
        report(op, samples);
    }

    let mut samples = Vec::with_capacity(5000);
    for i in 0..5200usize {
        let name = format!("tool_{:06}", 1 + (i * 7919) % TOOLS);
        let t = Instant::now();
        let tool = registry
            .get_tool(pb::GetToolRequest {
                key: Some(pb::get_tool_request::Key::Name(name.clone())),
                version: 0,
            })
            .await?
            .into_inner()
            .tool;
        if i >= 200 {
            samples.push(t.elapsed());
        }
        assert_eq!(tool.map(|t| t.name), Some(name));
    }
    report("get_by_name", samples);
    Ok(())
}
