//! What `ww deploy`, `ww undeploy` and `ww cells` print: one line per node's answer,
//! and a node's cells as a table.

use crate::limits::Limits;
use crate::net::manage::{self, CellListing, DeployAnswer, DeployRequest};

/// Whether `answer` is what `request` asked for, and the line saying so.
pub fn judge(request: &DeployRequest, answer: anyhow::Result<DeployAnswer>) -> (bool, String) {
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return (false, format!("failed: {error:#}")),
    };
    match (request.op, answer) {
        (_, DeployAnswer::Refused { reason }) => (false, format!("refused: {reason}")),
        (manage::Op::Deploy, DeployAnswer::Deployed { content, .. })
            if Some(content) != request.content =>
        {
            (
                false,
                format!("failed: the node deployed {content}, not the component sent"),
            )
        }
        (
            manage::Op::Deploy,
            DeployAnswer::Deployed {
                content,
                granted,
                dial,
                replaced,
                ..
            },
        ) => {
            let mut line = format!("deployed {content} (granted: {}", describe(&granted));
            if let Some(dial) = dial {
                line += &format!(", dial {dial}");
            }
            line += ")";
            if let Some(old) = replaced {
                line += &format!(", replacing {old}");
            }
            (true, line)
        }
        (manage::Op::Undeploy, DeployAnswer::Undeployed { protocol, content }) => {
            (true, format!("undeployed {protocol} ({content})"))
        }
        (_, other) => (
            false,
            format!("failed: an answer to another request: {other:?}"),
        ),
    }
}

/// The limits a deployer can ask for, as granted: `memory 128 MiB, cpu 10000 ms, …`.
pub fn describe(granted: &Limits) -> String {
    let or_none = |value: u64, unit: &str| match value {
        0 => "none".to_string(),
        value => format!("{value} {unit}"),
    };
    format!(
        "memory {} MiB, cpu {}, wall {}, instances {}",
        granted.memory_mb,
        or_none(granted.cpu_ms, "ms"),
        or_none(granted.wall_s, "s"),
        granted.max_instances
    )
}

/// A node's cells as a table with a header row, each cell's age counted to `now`.
pub fn format_cells(cells: &[CellListing], now_unix_s: u64) -> String {
    let header = ["PROTOCOL", "CID", "KIND", "SOURCE", "LIVE", "SINCE"].map(String::from);
    let mut rows = vec![header];
    for cell in cells {
        rows.push([
            cell.protocol.clone(),
            cell.content.to_string(),
            cell.kind.clone(),
            cell.source.clone(),
            cell.live.to_string(),
            age(now_unix_s.saturating_sub(cell.since_unix_s)),
        ]);
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (width, field) in widths.iter_mut().zip(row) {
            *width = (*width).max(field.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let fields: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(field, width)| format!("{field:width$}"))
            .collect();
        table += fields.join("  ").trim_end();
        table += "\n";
    }
    table
}

/// An age in its two largest units: `42s`, `3m12s`, `2h5m`, `4d3h`.
pub fn age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}
