//! `make bench-console`: server time of each admin console page with 100 000 tools and
//! 1 000 000 audit rows (plus a day of calls) on PostgreSQL, through the release
//! control plane's console over loopback HTTP.
//!
//! Prints one line per page:
//! `console page=<name> tools=100000 audit_rows=1000000 p50_ms=<x> p99_ms=<y>`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use toolplane_proto::v1 as pb;
use toolplane_tests::free_port;
use toolplane_tests::grpc::Admin;
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane, control_plane_with};

const TOOLS: usize = 100_000;
const AUDIT_ROWS: usize = 1_000_000;
/// Calls in the last 24 hours (the overview aggregates them).
const CALLS: usize = 100_000;
const SAMPLES: usize = 60;

/// Bulk loads in SQL: the bench measures reads, and this many registrations or audit
/// appends through the API would take many minutes.
async fn seed(client: &tokio_postgres::Client) {
    client
        .batch_execute(&format!(
            "INSERT INTO tools (id, name, category, description, version, input_schema, output_schema, examples, \
               capabilities, auth_type, rate_limit_rpm, timeout_ms, required_skills, data_sensitivity, provider, \
               endpoint, protocol, reliability_score, average_latency_ms, cost_per_call, enabled, side_effects, \
               idempotent, cacheable, cache_ttl_seconds, remote_name, created_at, updated_at) \
             SELECT gen_random_uuid(), 'tool_' || lpad(i::text, 6, '0'), \
               (ARRAY['web_search','data_retrieval','analysis','communication','integration'])[1 + i % 5], \
               'Benchmark tool number ' || i || ' converts, fetches and summarizes things', 1, \
               '{{\"type\":\"object\",\"properties\":{{\"q\":{{\"type\":\"string\"}}}}}}', 'null', '[]', \
               ARRAY[(ARRAY['search','retrieve','analyze','transform','generate'])[1 + i % 5]], \
               'none', 0, 5000, '{{}}', 'internal', 'bench-' || (i % 20), 'http://127.0.0.1:9/t', 'http', 0.9, 20, \
               0.001, true, 'none', true, false, 0, '', now(), now() \
             FROM generate_series(1, {TOOLS}) AS i; \
             INSERT INTO tool_versions (tool_id, version, spec, created_at) \
               SELECT id, 1, jsonb_build_object('name', name), now() FROM tools; \
             INSERT INTO agents (id, name, skills, team, created_at) \
               SELECT gen_random_uuid(), 'agent_' || i, '{{}}', 'bench', now() FROM generate_series(1, 50) AS i;"
        ))
        .await
        .unwrap();
    // A million audit rows in four chains over the last 30 days, referencing real
    // agents and tools.
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE a AS SELECT row_number() OVER () AS n, id FROM agents; \
             CREATE TEMP TABLE t AS SELECT row_number() OVER () AS n, id FROM tools WHERE name < 'tool_000200'; \
             INSERT INTO audit_events (event_id, action, actor_id, agent_id, tool_id, tool_version, task_id, \
               occurred_at, success, detail, chain, chain_seq, prev_hash, hash) \
             SELECT gen_random_uuid(), \
               (ARRAY['tool_invoked','cache_hit','permission_checked','rate_limited','error_occurred'])[1 + i % 5], \
               'sidecar:bench', a.id, t.id, 1, 'task-' || (i % 20000), \
               now() - make_interval(secs => ({AUDIT_ROWS} - i) * 2.5), i % 10 <> 0, 'bench event', \
               'sidecar:bench-' || (i % 4), i / 4 + 1, '', md5(i::text) \
             FROM generate_series(1, {AUDIT_ROWS}) AS i \
             JOIN a ON a.n = 1 + i % 50 JOIN t ON t.n = 1 + i % 199; \
             INSERT INTO audit_chain_heads (chain, chain_seq, hash) \
               SELECT chain, max(chain_seq), '' FROM audit_events GROUP BY chain; \
             INSERT INTO invocations (invocation_id, agent_id, task_id, requested_tool_id, tool_id, tool_version, \
               parameters, invoked_at, status, duration_ms, cost, completed_at, cache_hit, sidecar_id) \
             SELECT gen_random_uuid(), a.id, 'task-' || i, t.id, t.id, 1, '{{}}', \
               now() - make_interval(secs => i * 86400.0 / {CALLS}), \
               (ARRAY['success','success','success','success','execution_error','rate_limited'])[1 + i % 6], \
               20 + i % 400, 0.001, now() - make_interval(secs => i * 86400.0 / {CALLS}), i % 5 = 0, 'bench' \
             FROM generate_series(1, {CALLS}) AS i \
             JOIN a ON a.n = 1 + i % 50 JOIN t ON t.n = 1 + i % 199; \
             ANALYZE;"
        ))
        .await
        .unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let db = TestDb::create().await;
    // Migrate with one start, seed, then serve from a fresh start (the selection index
    // and learning load what was seeded).
    control_plane(Some(&db.url)).await.stop().await;
    let started = Instant::now();
    seed(&db.client().await).await;
    eprintln!(
        "seeded {TOOLS} tools, {AUDIT_ROWS} audit rows, {CALLS} calls in {:?}",
        started.elapsed()
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
    toolplane_tests::wait_for_port(port).await;
    let base = format!("http://{listen}/");
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin
        .registry
        .get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Name("tool_000042".to_owned())),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap();
    let agents = admin
        .identity
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    let agent = &agents[0].id;

    let client = toolplane_tests::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(format!("{base}login")).send().await.unwrap();
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .unwrap()
            .to_owned()
    };
    let login = cookie(&r, "tp_login");
    let body = r.text().await.unwrap();
    let at = body.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = body[at..].split('"').next().unwrap().to_owned();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .finish();
    let r = client
        .post(format!("{base}login"))
        .header("cookie", format!("tp_login={login}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let session = format!("tp_console={}", cookie(&r, "tp_console"));

    let pages = [
        ("overview", String::new()),
        ("tools", "tools".to_owned()),
        ("tools_search", "tools?q=number+4242".to_owned()),
        ("tools_by_category", "tools?category=analysis&enabled=yes".to_owned()),
        ("tool", format!("tools/{}", tool.id)),
        ("agents", "agents".to_owned()),
        ("agent", format!("agents/{agent}")),
        ("access", "access".to_owned()),
        ("audit", "audit".to_owned()),
        ("audit_by_agent", format!("audit?agent_id={agent}")),
        ("audit_by_action", "audit?action=rate_limited".to_owned()),
        (
            "audit_by_action_outcome",
            "audit?action=tool_invoked&outcome=failed".to_owned(),
        ),
        ("selection", "selection".to_owned()),
        ("selection_task", "selection?task=summarize+a+web+page".to_owned()),
    ];
    for (name, path) in pages {
        let url = format!("{base}{path}");
        let mut samples = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES + 5 {
            let t = Instant::now();
            let r = client.get(&url).header("cookie", &session).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            let took = t.elapsed();
            assert!(status.is_success(), "{name}: {status} {}", &body[..body.len().min(300)]);
            if i >= 5 {
                samples.push(took);
            }
        }
        samples.sort();
        let p = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
        println!(
            "console page={name} tools={TOOLS} audit_rows={AUDIT_ROWS} p50_ms={:.1} p99_ms={:.1}",
            p(0.5),
            p(0.99)
        );
    }
}
