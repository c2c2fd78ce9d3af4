use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;
use crate::model::{DataSensitivity as S, PermissionType};
use crate::testutil::{agent, grant, tool};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

/// A grant in the table, built for the case's agent and tool.
#[derive(Clone)]
enum G {
    Full,
    ReadOnly,
    Data(S),
    Hours(&'static str, &'static [u32]),
    Limited(u32, &'static str),
    ExpiredAt(&'static str, Box<G>),
}

impl G {
    fn build(&self, a: &Agent, t: &Tool) -> Permission {
        match self {
            G::Full => grant(a, t, PermissionType::FullAccess),
            G::ReadOnly => grant(a, t, PermissionType::ReadOnly),
            G::Data(s) => Permission {
                max_sensitivity: Some(*s),
                ..grant(a, t, PermissionType::DataRestricted)
            },
            G::Hours(tz, hours) => Permission {
                allowed_hours: hours.to_vec(),
                time_zone: (*tz).to_owned(),
                ..grant(a, t, PermissionType::TimeRestricted)
            },
            G::Limited(n, tz) => Permission {
                max_invocations_per_day: *n,
                time_zone: (*tz).to_owned(),
                ..grant(a, t, PermissionType::LimitedInvocations)
            },
            G::ExpiredAt(when, inner) => Permission {
                expires_at: Some(at(when)),
                ..inner.build(a, t)
            },
        }
    }
}

#[derive(Debug, PartialEq)]
enum Want {
    /// Allowed outright by the grant at this index.
    By(usize),
    /// Allowed while one of these grants' quotas lasts.
    Metered(&'static [usize]),
    Deny,
}

struct Case {
    name: &'static str,
    writes: bool,
    sensitivity: S,
    grants: Vec<G>,
    now: &'static str,
    want: Want,
    /// The explanation must say this.
    reason: &'static str,
}

fn case(name: &'static str, grants: Vec<G>, now: &'static str, want: Want, reason: &'static str) -> Case {
    Case {
        name,
        writes: false,
        sensitivity: S::Internal,
        grants,
        now,
        want,
        reason,
    }
}

fn table() -> Vec<Case> {
    const NOON: &str = "2026-06-15T12:00:00Z";
    vec![
        case("no grant", vec![], NOON, Want::Deny, "has no grant"),
        case("full access", vec![G::Full], NOON, Want::By(0), "full_access"),
        case(
            "read-only on a read tool",
            vec![G::ReadOnly],
            NOON,
            Want::By(0),
            "read_only",
        ),
        Case {
            writes: true,
            ..case(
                "read-only on a writing tool",
                vec![G::ReadOnly],
                NOON,
                Want::Deny,
                "the tool writes",
            )
        },
        Case {
            writes: true,
            ..case(
                "read-only and full on a writing tool",
                vec![G::ReadOnly, G::Full],
                NOON,
                Want::By(1),
                "full_access",
            )
        },
        case(
            "data restricted at the level",
            vec![G::Data(S::Internal)],
            NOON,
            Want::By(0),
            "data_restricted",
        ),
        case(
            "data restricted above the level",
            vec![G::Data(S::Confidential)],
            NOON,
            Want::By(0),
            "data_restricted",
        ),
        case(
            "data restricted below the level",
            vec![G::Data(S::Public)],
            NOON,
            Want::Deny,
            "above the granted public",
        ),
        Case {
            sensitivity: S::Restricted,
            ..case(
                "restricted tool, confidential grant",
                vec![G::Data(S::Confidential)],
                NOON,
                Want::Deny,
                "restricted is above",
            )
        },
        Case {
            sensitivity: S::Restricted,
            ..case(
                "restricted tool, restricted grant",
                vec![G::Data(S::Restricted)],
                NOON,
                Want::By(0),
                "data_restricted",
            )
        },
        case(
            "expired full access",
            vec![G::ExpiredAt("2026-06-15T11:59:59Z", Box::new(G::Full))],
            NOON,
            Want::Deny,
            "expired at",
        ),
        case(
            "expires exactly now",
            vec![G::ExpiredAt(NOON, Box::new(G::Full))],
            NOON,
            Want::Deny,
            "expired at",
        ),
        case(
            "expires a second later",
            vec![G::ExpiredAt("2026-06-15T12:00:01Z", Box::new(G::Full))],
            NOON,
            Want::By(0),
            "full_access",
        ),
        case(
            "expired full, live read-only",
            vec![G::ExpiredAt("2026-01-01T00:00:00Z", Box::new(G::Full)), G::ReadOnly],
            NOON,
            Want::By(1),
            "read_only",
        ),
        case(
            "hours in UTC, inside",
            vec![G::Hours("", &[12])],
            NOON,
            Want::By(0),
            "time_restricted",
        ),
        case(
            "hours in UTC, outside",
            vec![G::Hours("UTC", &[13])],
            NOON,
            Want::Deny,
            "outside the allowed hours",
        ),
        // Berlin is UTC+2 in summer: 21:59Z is 23:59, 22:30Z is 00:30 the next day.
        case(
            "around midnight, 23:59 local",
            vec![G::Hours("Europe/Berlin", &[23, 0])],
            "2026-06-30T21:59:00Z",
            Want::By(0),
            "time_restricted",
        ),
        case(
            "around midnight, 00:30 local",
            vec![G::Hours("Europe/Berlin", &[23, 0])],
            "2026-06-30T22:30:00Z",
            Want::By(0),
            "time_restricted",
        ),
        case(
            "around midnight, 01:00 local",
            vec![G::Hours("Europe/Berlin", &[23, 0])],
            "2026-06-30T23:00:00Z",
            Want::Deny,
            "01:00",
        ),
        case(
            "around midnight, 22:59 local",
            vec![G::Hours("Europe/Berlin", &[23, 0])],
            "2026-06-30T20:59:00Z",
            Want::Deny,
            "22:59",
        ),
        // New York springs forward on 2026-03-08: 01:59 EST is followed by 03:00 EDT.
        case(
            "DST spring, 01:59 EST",
            vec![G::Hours("America/New_York", &[1])],
            "2026-03-08T06:59:00Z",
            Want::By(0),
            "time_restricted",
        ),
        case(
            "DST spring, hour 2 never comes",
            vec![G::Hours("America/New_York", &[2])],
            "2026-03-08T07:00:00Z",
            Want::Deny,
            "03:00",
        ),
        case(
            "DST spring, 03:00 EDT",
            vec![G::Hours("America/New_York", &[3])],
            "2026-03-08T07:00:00Z",
            Want::By(0),
            "time_restricted",
        ),
        // ... and falls back on 2026-11-01: 01:30 happens twice, both inside hour 1.
        case(
            "DST fall, first 01:30",
            vec![G::Hours("America/New_York", &[1])],
            "2026-11-01T05:30:00Z",
            Want::By(0),
            "time_restricted",
        ),
        case(
            "DST fall, second 01:30",
            vec![G::Hours("America/New_York", &[1])],
            "2026-11-01T06:30:00Z",
            Want::By(0),
            "time_restricted",
        ),
        case(
            "DST fall, 02:00 EST",
            vec![G::Hours("America/New_York", &[1])],
            "2026-11-01T07:00:00Z",
            Want::Deny,
            "02:00",
        ),
        case(
            "unknown time zone",
            vec![G::Hours("Mars/Olympus", &[12])],
            NOON,
            Want::Deny,
            "not an IANA time zone",
        ),
        case(
            "limited",
            vec![G::Limited(5, "")],
            NOON,
            Want::Metered(&[0]),
            "limited_invocations",
        ),
        case(
            "limited of zero",
            vec![G::Limited(0, "")],
            NOON,
            Want::Deny,
            "allows nothing",
        ),
        case(
            "limited and full: full wins",
            vec![G::Limited(5, ""), G::Full],
            NOON,
            Want::By(1),
            "full_access",
        ),
        case(
            "two limited: both budgets",
            vec![G::Limited(5, ""), G::Limited(2, "Asia/Tokyo")],
            NOON,
            Want::Metered(&[0, 1]),
            "limited_invocations",
        ),
        case(
            "limited expired",
            vec![G::ExpiredAt("2026-06-01T00:00:00Z", Box::new(G::Limited(5, "")))],
            NOON,
            Want::Deny,
            "expired",
        ),
        case(
            "hours outside, limited inside",
            vec![G::Hours("", &[3]), G::Limited(1, "")],
            NOON,
            Want::Metered(&[1]),
            "limited_invocations",
        ),
        case(
            "everything refused explains each",
            vec![G::Hours("", &[3]), G::Data(S::Public)],
            NOON,
            Want::Deny,
            "; grant",
        ),
    ]
}

#[test]
fn the_evaluator_over_every_type_edge_and_combination() {
    let a = agent("a");
    for c in table() {
        let mut t = tool("t");
        t.spec.requirements.data_sensitivity = c.sensitivity;
        if c.writes {
            t.spec.side_effects = SideEffects::Write;
        }
        let grants: Vec<Permission> = c.grants.iter().map(|g| g.build(&a, &t)).collect();
        let d = evaluate(&a, &t, &grants, at(c.now));
        let got = match (d.allowed, d.quotas.is_empty()) {
            (false, _) => Want::Deny,
            (true, true) => Want::By(
                grants
                    .iter()
                    .position(|g| Some(g.id) == d.permission_id)
                    .expect("names a grant"),
            ),
            (true, false) => {
                let idx: Vec<usize> = d
                    .quotas
                    .iter()
                    .map(|q| grants.iter().position(|g| g.id == q.permission_id).expect("a grant"))
                    .collect();
                assert!(
                    c.want == Want::Metered(Box::leak(idx.clone().into_boxed_slice())),
                    "{}: metered by {idx:?}, want {:?}",
                    c.name,
                    c.want
                );
                c.want.clone_metered()
            }
        };
        assert_eq!(got, c.want, "{}: {}", c.name, d.reason);
        assert!(
            d.reason.contains(c.reason),
            "{}: reason {:?} lacks {:?}",
            c.name,
            d.reason,
            c.reason
        );
    }
}

impl Want {
    fn clone_metered(&self) -> Want {
        match self {
            Want::Metered(m) => Want::Metered(m),
            Want::By(i) => Want::By(*i),
            Want::Deny => Want::Deny,
        }
    }
}

#[test]
fn grants_of_other_agents_or_tools_do_not_count() {
    let a = agent("a");
    let b = agent("b");
    let t = tool("t");
    let u = tool("u");
    let gb = grant(&b, &t, PermissionType::FullAccess);
    let gu = grant(&a, &u, PermissionType::FullAccess);
    assert!(!evaluate(&a, &t, [&gb, &gu], Utc::now()).allowed);
}

#[test]
fn disabled_tools_and_missing_skills_refuse_whatever_the_grants() {
    let a = agent("a");
    let mut t = tool("t");
    let g = grant(&a, &t, PermissionType::FullAccess);
    t.spec.requirements.required_agent_skills = vec!["sql".to_owned(), "finance".to_owned()];
    let d = evaluate(&a, &t, [&g], Utc::now());
    assert!(!d.allowed);
    assert!(d.reason.contains("sql, finance"), "{}", d.reason);
    t.spec.requirements.required_agent_skills.clear();
    t.spec.enabled = false;
    assert!(evaluate(&a, &t, [&g], Utc::now()).reason.contains("disabled"));
}

#[test]
fn the_daily_counter_resets_at_local_midnight() {
    let ny: Tz = "America/New_York".parse().expect("tz");
    // The day before spring-forward ends at midnight EST (UTC-5)...
    let (day, reset) = local_day(at("2026-03-07T12:00:00Z"), ny);
    assert_eq!(day.to_string(), "2026-03-07");
    assert_eq!(reset, at("2026-03-08T05:00:00Z"));
    // ...the change day itself at midnight EDT (UTC-4): 23 hours long.
    let (day, reset) = local_day(at("2026-03-08T12:00:00Z"), ny);
    assert_eq!(day.to_string(), "2026-03-08");
    assert_eq!(reset, at("2026-03-09T04:00:00Z"));
    // Late evening in New York is already the next day in UTC: still the local day.
    let (day, _) = local_day(at("2026-06-16T03:00:00Z"), ny);
    assert_eq!(day.to_string(), "2026-06-15");
    // Where midnight itself is skipped (Santiago, 2026-09-06 00:00 -> 01:00), the day
    // ends at the first instant that exists.
    let scl: Tz = "America/Santiago".parse().expect("tz");
    let (_, reset) = local_day(at("2026-09-05T12:00:00Z"), scl);
    assert_eq!(reset, at("2026-09-06T04:00:00Z"));
}

const KINDS: [PermissionType; 5] = [
    PermissionType::FullAccess,
    PermissionType::ReadOnly,
    PermissionType::LimitedInvocations,
    PermissionType::TimeRestricted,
    PermissionType::DataRestricted,
];
const LEVELS: [S; 4] = [S::Public, S::Internal, S::Confidential, S::Restricted];
const ZONES: [&str; 4] = ["", "Europe/Berlin", "America/New_York", "Asia/Kolkata"];

/// Written apart from the evaluator: does this one grant, on its own terms, let the
/// agent use the tool at `now`?
fn oracle_allows(g: &Permission, t: &Tool, now: DateTime<Utc>) -> bool {
    let live = g.expires_at.is_none_or(|e| e > now);
    let tz: Tz = if g.time_zone.is_empty() {
        Tz::UTC
    } else {
        g.time_zone.parse().expect("zone")
    };
    live && match g.kind {
        PermissionType::FullAccess => true,
        PermissionType::ReadOnly => t.spec.side_effects != SideEffects::Write,
        PermissionType::DataRestricted => g
            .max_sensitivity
            .is_some_and(|m| t.spec.requirements.data_sensitivity <= m),
        PermissionType::TimeRestricted => g.allowed_hours.contains(&now.with_timezone(&tz).hour()),
        PermissionType::LimitedInvocations => g.max_invocations_per_day > 0,
    }
}

/// Agent, tool, type, daily limit, hours, zone, max sensitivity, expiry offset.
type GrantShape = (usize, usize, usize, u32, Vec<u32>, usize, Option<usize>, Option<i64>);

fn grant_strategy() -> impl Strategy<Value = GrantShape> {
    (
        0..2usize,                                 // agent
        0..2usize,                                 // tool
        0..KINDS.len(),                            // type
        0..3u32,                                   // daily limit
        proptest::collection::vec(0..24u32, 0..4), // hours
        0..ZONES.len(),                            // zone
        proptest::option::of(0..LEVELS.len()),     // max sensitivity
        proptest::option::of(-86_400..86_400i64),  // expiry offset from now
    )
}

proptest! {
    #[test]
    fn no_combination_of_grants_reaches_outside_them(
        specs in proptest::collection::vec(grant_strategy(), 0..8),
        writes in any::<bool>(),
        level in 0..LEVELS.len(),
        now_s in 1_700_000_000i64..1_900_000_000i64,
    ) {
        let now = DateTime::from_timestamp(now_s, 0).expect("time");
        let agents = [agent("a"), agent("b")];
        let mut tools = [tool("t"), tool("u")];
        for t in &mut tools {
            t.spec.requirements.data_sensitivity = LEVELS[level];
            if writes { t.spec.side_effects = SideEffects::Write; }
        }
        let grants: Vec<Permission> = specs.iter().map(|(ai, ti, k, n, hours, z, lvl, exp)| Permission {
            max_invocations_per_day: *n,
            allowed_hours: hours.clone(),
            time_zone: ZONES[*z].to_owned(),
            max_sensitivity: lvl.map(|l| LEVELS[l]),
            expires_at: exp.map(|s| now + Duration::seconds(s)),
            ..grant(&agents[*ai], &tools[*ti], KINDS[*k])
        }).collect();
        let (a, t) = (&agents[0], &tools[0]);
        let d = evaluate(a, t, &grants, now);
        let mine: Vec<&Permission> = grants.iter().filter(|g| g.agent_id == a.id && g.tool_id == t.id).collect();
        // Allowed only through a grant of this agent for this tool that allows it.
        if d.allowed {
            let named = mine.iter().find(|g| Some(g.id) == d.permission_id);
            prop_assert!(named.is_some_and(|g| oracle_allows(g, t, now)), "{}", d.reason);
            for q in &d.quotas {
                let g = mine.iter().find(|g| g.id == q.permission_id);
                prop_assert!(g.is_some_and(|g| g.kind == PermissionType::LimitedInvocations && oracle_allows(g, t, now)));
            }
            // Metered only when no unmetered grant holds.
            let free = mine.iter().any(|g| g.kind != PermissionType::LimitedInvocations && oracle_allows(g, t, now));
            prop_assert_eq!(d.quotas.is_empty(), free);
        }
        // And never refused when some grant allows it.
        prop_assert_eq!(d.allowed, mine.iter().any(|g| oracle_allows(g, t, now)));
    }
}
