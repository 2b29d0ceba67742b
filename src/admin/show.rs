//! How `tcplb ctl` shows backends (and `/backends` their runtime fields): one row each (pool, backend, state, weight configured
//! and effective, active sessions, what the last health check and agent check said), as a
//! text table or as JSON (`{"backends": [...]}`). The same rows answer every command that
//! changes a backend, with its new state.

use crate::admin::json::json_string;
use crate::fleet::Fleet;
use crate::fleet::agent;
use crate::fleet::backend::{Admin, Backend};
use std::fmt::Write as _;

/// One backend and the pool it is in.
pub struct Row<'a> {
    pub fleet: &'a Fleet,
    pub backend: &'a Backend,
}

/// The effective weight (on the slow-start ramp, a fraction): `2`, `0.35`.
fn effective(b: &Backend, now: u64) -> String {
    let share = b.share(now);
    let unit = crate::fleet::backend::SHARE_UNIT;
    if share % unit == 0 {
        (share / unit).to_string()
    } else {
        format!("{:.2}", share as f64 / unit as f64)
    }
}

/// What the checks say: `off`, `up`, `down`, with the last check's note.
fn checks(row: &Row) -> (&'static str, Option<String>) {
    if row.fleet.policy().checks.is_none() {
        return ("off", None);
    }
    let state = if row.backend.checks_up() {
        "up"
    } else {
        "down"
    };
    (state, row.backend.notes().check)
}

/// The rows as a text table (`now`: ms since the clock's epoch).
pub fn text(rows: &[Row], now: u64) -> String {
    let mut table: Vec<[String; 7]> = vec![[
        "POOL".into(),
        "BACKEND".into(),
        "STATE".into(),
        "WEIGHT".into(),
        "ACTIVE".into(),
        "CHECKS".into(),
        "AGENT".into(),
    ]];
    for row in rows {
        let b = row.backend;
        let mut name = b.addr.to_string();
        if b.name != name {
            name.push_str(&format!(" ({})", b.name));
        }
        if b.is_backup() {
            name.push_str(" backup");
        }
        let mut state = b.state(now).as_str().to_string();
        if b.admin() != Admin::Ready && b.state(now).as_str() != b.admin().as_str() {
            state.push_str(&format!(" ({})", b.admin().as_str()));
        }
        let mut weight = format!("{}/{}", b.configured_weight(), effective(b, now));
        if b.weight_set().is_some() {
            weight.push_str(" set");
        }
        if b.ramping(now) {
            weight.push_str(&format!(" slow-start {}%", b.ramp(now) / 10));
        }
        let (check_state, note) = checks(row);
        let checks = match note {
            Some(note) => format!("{check_state}: {note}"),
            None => check_state.to_string(),
        };
        let agent = match b.agent_port() {
            None => "-".to_string(),
            Some(port) => match b.notes().agent {
                Some(note) => format!(":{port} {note}"),
                None => format!(":{port} (not asked yet)"),
            },
        };
        table.push([
            row.fleet.name().to_string(),
            name,
            state,
            weight,
            b.active().to_string(),
            checks,
            agent,
        ]);
    }
    let mut widths = [0usize; 7];
    for line in &table {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &table {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The rows as JSON: `{"backends": [...]}`.
pub fn json(rows: &[Row], now: u64) -> String {
    let mut out = String::from("{\"backends\": [");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n  ");
        out.push_str(&backend_json(row.fleet, row.backend, now));
    }
    out.push_str("\n]}\n");
    out
}

/// One backend's runtime fields as JSON members (without braces), shared with
/// `/backends`: `"admin": "drain", "weight_configured": 2, ...`.
pub fn runtime_members(fleet: &Fleet, b: &Backend, now: u64) -> String {
    let (check_state, note) = checks(&Row { fleet, backend: b });
    let agent = match b.agent_port() {
        None => "null".to_string(),
        Some(port) => {
            let notes = b.notes();
            format!(
                "{{\"port\": {port}, \"said\": {}, \"last\": {}}}",
                json_string(&agent::describe(&b.agent())),
                notes
                    .agent
                    .as_deref()
                    .map_or("null".to_string(), json_string)
            )
        }
    };
    format!(
        "\"admin\": \"{}\", \"weight_configured\": {}, \"weight_set\": {}, \
         \"weight_effective\": {}, \"slow_start\": {}, \"checks\": \"{check_state}\", \
         \"last_check\": {}, \"agent\": {agent}",
        b.admin().as_str(),
        b.configured_weight(),
        b.weight_set().map_or("null".to_string(), |w| w.to_string()),
        effective(b, now),
        if b.ramping(now) {
            format!("{:.2}", b.ramp(now) as f64 / 1000.0)
        } else {
            "null".to_string()
        },
        note.as_deref().map_or("null".to_string(), json_string),
    )
}

fn backend_json(fleet: &Fleet, b: &Backend, now: u64) -> String {
    format!(
        "{{\"pool\": {}, \"backend\": {}, \"name\": {}, \"backup\": {}, \"state\": \"{}\", \
         \"active\": {}, {}}}",
        json_string(fleet.name()),
        json_string(&b.addr.to_string()),
        json_string(&b.name),
        b.is_backup(),
        b.state(now).as_str(),
        b.active(),
        runtime_members(fleet, b, now),
    )
}
