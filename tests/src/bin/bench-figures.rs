//! The latest figures of every bench, from `target/bench/*.json`, as one Markdown table:
//! `cargo run -p waconnect-tests --bin bench-figures`. Each bench writes its report with
//! when it ran, the commit and the machine's cores; this reads them all and prints each
//! figure on a row, so the README's performance section is a copy of what was measured.

use serde_json::Value;

/// Maps of per-operation counts are the benches' detail; the table keeps the totals.
const DETAIL: [&str; 2] = ["by_call", "by_service"];
/// Where the figures come from: columns of their own.
const PROVENANCE: [&str; 3] = ["measured_at", "commit", "cores"];

fn figures(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                let provenance = prefix.is_empty() && PROVENANCE.contains(&k.as_str());
                if provenance || DETAIL.contains(&k.as_str()) {
                    continue;
                }
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                figures(&name, v, out);
            }
        }
        Value::Number(n) => {
            let shown = match n.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{f:.3}"),
                _ => n.to_string(),
            };
            out.push((prefix.to_owned(), shown));
        }
        Value::Bool(b) => out.push((prefix.to_owned(), b.to_string())),
        // One run per setting: each named by what sets it apart, e.g. `holding[wss 10000]`.
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let label: Vec<String> = ["transport", "conversations", "rate"]
                    .iter()
                    .filter_map(|k| item.get(*k))
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect();
                let label = if label.is_empty() {
                    i.to_string()
                } else {
                    label.join(" ")
                };
                figures(&format!("{prefix}[{label}]"), item, out);
            }
        }
        _ => {}
    }
}

fn main() -> anyhow::Result<()> {
    let dir = waconnect_tests::bench_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (run a bench first)", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    println!("| bench | figure | value | measured | commit | cores |");
    println!("|---|---|---|---|---|---|");
    for path in files {
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let bench = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = |k: &str| {
            report
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let measured: String = text("measured_at").chars().take(10).collect();
        let cores = report.get("cores").map_or("?".to_owned(), Value::to_string);
        let mut rows = Vec::new();
        figures("", &report, &mut rows);
        for (figure, value) in rows {
            println!(
                "| {bench} | {figure} | {value} | {measured} | {} | {cores} |",
                text("commit")
            );
        }
    }
    Ok(())
}
