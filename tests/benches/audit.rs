//! `make bench-audit`: sustained audit ingest into PostgreSQL through the control plane
//! (sidecar sync streams → store → commit → ack), next to a raw multi-row INSERT of
//! the same kind of rows into the same table, in the same run.
//!
//! Prints `audit events_per_s=<x> raw_rows_per_s=<y> ratio=<x/y>`.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use toolplane_core::audit::{ChainHead, stored_time};
use toolplane_core::convert::sync_event_to_pb;
use toolplane_core::model::{AuditEvent, SyncEvent};
use toolplane_proto::v1 as pb;
use toolplane_tests::events::tool_invoked;
use toolplane_tests::grpc::{Admin, channel};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, control_plane};
use uuid::Uuid;

/// Events per sidecar stream, streams in parallel, events per batch.
const EVENTS: usize = 100_000;
const STREAMS: usize = 2;
const BATCH: usize = 1000;
/// Batches a stream sends ahead of its acks (the sidecar's outbox does the same).
const IN_FLIGHT: usize = 4;

fn event(sidecar: &str, n: usize) -> AuditEvent {
    AuditEvent {
        tool_version: 3,
        task_id: format!("task-{}", n % 97),
        sanitized_parameters: json!({"text": "count the words of this sentence", "lang": "en", "api_key": "[REDACTED]"}),
        permission_id: Some(Uuid::from_u128(11)),
        ..tool_invoked(Uuid::from_u128(7), Uuid::from_u128(9), sidecar)
    }
}

/// One stream's batches, built before the clock starts (the bench measures ingest, not
/// its own event synthesis).
fn stream_batches(sidecar: &str) -> Vec<pb::ConnectRequest> {
    (0..EVENTS / BATCH)
        .map(|b| pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Events(pb::EventBatch {
                events: (0..BATCH)
                    .map(|i| sync_event_to_pb(&SyncEvent::Audit(event(sidecar, b * BATCH + i))))
                    .collect(),
                spool_depth: 0,
            })),
        })
        .collect()
}

/// One sidecar's stream: hello, then batches with `IN_FLIGHT` unacked, until every
/// event is acked.
async fn stream_events(url: String, token: String, sidecar: String, batches: Vec<pb::ConnectRequest>) {
    let ch = channel(&url, Some(&token)).await;
    let mut client = pb::sidecar_sync_client::SidecarSyncClient::new(ch);
    let (tx, rx) = mpsc::channel::<pb::ConnectRequest>(IN_FLIGHT + 1);
    tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(pb::SidecarHello {
            sidecar_id: sidecar.clone(),
            version: "bench".to_owned(),
            known_revision: 0,
            scope: None,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client.connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let total = batches.len();
    let sender = tokio::spawn(async move {
        for b in batches {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        // Keep the stream open until the acks are in.
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    });
    let mut acked = 0;
    while acked < total {
        match inbound.message().await.unwrap().and_then(|m| m.message) {
            Some(pb::connect_response::Message::Ack(a)) => {
                assert_eq!(a.event_ids.len(), BATCH);
                acked += 1;
            }
            Some(_) => {}
            None => panic!("the control plane closed the stream"),
        }
    }
    sender.abort();
}

/// A raw stream's rows: events with their chain position and hashes, built before the
/// clock starts like the sidecar streams' batches.
/// The action, result status and classification as text.
type RawRow = (AuditEvent, i64, String, String, [&'static str; 3]);

fn raw_rows(chain: &str) -> Vec<Vec<RawRow>> {
    let mut head = ChainHead::default();
    (0..EVENTS / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    let mut e = event(chain, b * BATCH + i);
                    e.occurred_at = stored_time(e.occurred_at);
                    let (seq, prev, hash) = head.append(chain, &e);
                    let texts = [
                        e.action.as_str(),
                        e.result.as_ref().unwrap().status.as_str(),
                        e.data_classification.unwrap().as_str(),
                    ];
                    (e, seq as i64, prev, hash, texts)
                })
                .collect()
        })
        .collect()
}

/// The same kind of rows, straight into the same table with multi-row INSERTs.
async fn raw_insert(db_url: String, chain: String, batches: Vec<Vec<RawRow>>) {
    let (client, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let cols = "event_id, action, invocation_id, actor_id, agent_id, tool_id, tool_version, task_id, occurred_at, \
        sanitized_parameters, result_size_bytes, result_status, result_digest, success, detail, compliance_frameworks, \
        data_classification, sidecar_id, permission_id, chain, chain_seq, prev_hash, hash";
    const N: usize = 23;
    let placeholders: Vec<String> = (0..BATCH)
        .map(|r| {
            let p: Vec<String> = (1..=N).map(|c| format!("${}", r * N + c)).collect();
            format!("({})", p.join(","))
        })
        .collect();
    let sql = format!("INSERT INTO audit_events ({cols}) VALUES {}", placeholders.join(","));
    let stmt = client.prepare(&sql).await.unwrap();
    let size: i64 = 42;
    let version: i64 = 3;
    for rows in &batches {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::with_capacity(BATCH * N);
        for (e, seq, prev, hash, t) in rows {
            let r = e.result.as_ref().unwrap();
            params.extend_from_slice(&[
                &e.event_id,
                &t[0],
                &e.invocation_id,
                &e.actor_id,
                &e.agent_id,
                &e.tool_id,
                &version,
                &e.task_id,
                &e.occurred_at,
                &e.sanitized_parameters,
                &size,
                &t[1],
                &r.digest,
                &e.success,
                &e.detail,
                &e.compliance_frameworks,
                &t[2],
                &e.sidecar_id,
                &e.permission_id,
                &chain,
                seq,
                prev,
                hash,
            ]);
        }
        client.execute(&stmt, &params).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let db = TestDb::create().await;
    let cp = control_plane(Some(&db.url)).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    // One token per sidecar, as deployed: each stream writes a chain of its own.
    let mut tokens = Vec::new();
    for _ in 0..STREAMS {
        tokens.push(admin.token(pb::Role::Sidecar, "").await);
    }
    let total = (EVENTS * STREAMS) as f64;

    let batches: Vec<Vec<pb::ConnectRequest>> = (0..STREAMS).map(|s| stream_batches(&format!("bench-{s}"))).collect();
    let started = Instant::now();
    let streams: Vec<_> = tokens
        .into_iter()
        .zip(batches)
        .enumerate()
        .map(|(s, (token, batches))| tokio::spawn(stream_events(cp.url(), token, format!("bench-{s}"), batches)))
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    let ingest = total / started.elapsed().as_secs_f64();

    let rows: Vec<Vec<Vec<RawRow>>> = (0..STREAMS).map(|s| raw_rows(&format!("raw-{s}"))).collect();
    let started = Instant::now();
    let raws: Vec<_> = rows
        .into_iter()
        .enumerate()
        .map(|(s, rows)| tokio::spawn(raw_insert(db.url.clone(), format!("raw-{s}"), rows)))
        .collect();
    for r in raws {
        r.await.unwrap();
    }
    let raw = total / started.elapsed().as_secs_f64();

    let client = db.client().await;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM audit_events WHERE chain LIKE 'sidecar:%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as f64, total, "every acked event is stored once");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM audit_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "no event of the bench is dead-lettered");
    println!("audit events={} streams={STREAMS} batch={BATCH}", EVENTS * STREAMS);
    println!(
        "audit events_per_s={ingest:.0} raw_rows_per_s={raw:.0} ratio={:.2}",
        ingest / raw
    );
}
