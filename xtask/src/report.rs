//! The one table of `make bench`: each benchmark hands its headline figures, each beside its
//! baseline, to [`figure`]; under `make bench` (`scripts/bench.sh`) they are appended to the
//! file `BENCH_FIGURES` names, and `cargo xtask bench-table` then rewrites the table at the top
//! of docs/benchmarks.md from them. A benchmark run by hand prints its figures and writes
//! nothing. The sections below the table explain each benchmark and keep the figures of
//! earlier runs; the table holds the latest figure of each, with its date and command.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail, ensure};

/// A measured value and its unit ("ms", "MiB/s", "%", ...).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value(pub f64, pub &'static str);

impl Value {
    fn render(self) -> String {
        let Value(v, unit) = self;
        let digits = match v.abs() {
            x if x >= 100.0 => 0,
            x if x >= 10.0 => 1,
            x if x >= 1.0 => 2,
            _ => 3,
        };
        format!("{v:.digits$} {unit}")
    }
}

/// One figure of the running benchmark: `ours` beside `baseline` (what it is and its value),
/// with the goal where the project has one ("≤ 1.15" of the ratio, "< 60 MiB" of the value).
/// The ratio is always ours / baseline.
pub(crate) fn figure(measure: &str, ours: Value, baseline: Option<(&str, Value)>, goal: &str) -> anyhow::Result<()> {
    let Ok(path) = std::env::var("BENCH_FIGURES") else { return Ok(()) };
    let target = std::env::var("BENCH_TARGET").context("BENCH_FIGURES is set without BENCH_TARGET")?;
    let date = std::env::var("BENCH_DATE").context("BENCH_FIGURES is set without BENCH_DATE")?;
    let row = Row {
        command: format!("`make {target}`"),
        measure: measure.to_owned(),
        ours: ours.render(),
        baseline: baseline.map_or_else(String::new, |(name, v)| format!("{} ({name})", v.render())),
        ratio: baseline.map_or_else(String::new, |(_, b)| format!("{:.2}", ours.0 / b.0)),
        goal: goal.to_owned(),
        date,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("BENCH_FIGURES {path}"))?;
    writeln!(file, "{}", row.line()).with_context(|| format!("BENCH_FIGURES {path}"))?;
    Ok(())
}

/// A row of the table, each cell as shown.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    command: String,
    measure: String,
    ours: String,
    baseline: String,
    ratio: String,
    goal: String,
    date: String,
}

const HEADER: &str =
    "| command | measure | ours | baseline | ours / baseline | goal | date (UTC) |\n|---|---|---|---|---|---|---|\n";
const BEGIN: &str = "<!-- make bench: begin. Written by `cargo xtask bench-table` (scripts/bench.sh); rerun `make bench`, do not edit. -->";
const END: &str = "<!-- make bench: end -->";

impl Row {
    fn cells(&self) -> [&str; 7] {
        [&self.command, &self.measure, &self.ours, &self.baseline, &self.ratio, &self.goal, &self.date]
    }

    /// The row as a line of the Markdown table (a `|` inside a cell would split it: it becomes `/`).
    fn line(&self) -> String {
        let cells: Vec<String> = self.cells().iter().map(|c| c.replace('|', "/").replace('\n', " ")).collect();
        format!("| {} |", cells.join(" | "))
    }

    fn parse(line: &str) -> anyhow::Result<Row> {
        let inner = line
            .trim()
            .strip_prefix('|')
            .and_then(|l| l.strip_suffix('|'))
            .with_context(|| format!("not a table row: {line:?}"))?;
        let cells: Vec<String> = inner.split('|').map(|c| c.trim().to_owned()).collect();
        let [command, measure, ours, baseline, ratio, goal, date] = <[String; 7]>::try_from(cells)
            .map_err(|cells| anyhow::anyhow!("a row of 7 cells, found {}: {line:?}", cells.len()))?;
        Ok(Row { command, measure, ours, baseline, ratio, goal, date })
    }
}

/// How one benchmark of the run ended, from scripts/bench.sh's `status.tsv`: target, `ok` or
/// `failed`, seconds.
#[derive(Debug, PartialEq)]
struct Outcome {
    target: String,
    ok: bool,
    seconds: u64,
}

fn parse_status(text: &str) -> anyhow::Result<Vec<Outcome>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [target, status, seconds] = fields[..] else { bail!("status.tsv: 3 fields, found {line:?}") };
            let ok = match status {
                "ok" => true,
                "failed" => false,
                other => bail!("status.tsv: status `ok` or `failed`, found {other:?}"),
            };
            Ok(Outcome { target: target.to_owned(), ok, seconds: seconds.parse().context("status.tsv: seconds")? })
        })
        .collect()
}

/// The new table section: the benchmarks in the table's order (those new to it after, in run
/// order); for each, this run's rows where it ran, passed and left figures, else the rows the
/// table had (older, with their own dates). A run of some benchmarks leaves the others' rows.
fn section(
    summary: &str,
    outcomes: &[Outcome],
    fresh: &dyn Fn(&str) -> anyhow::Result<Option<Vec<Row>>>,
    old: &[Row],
) -> anyhow::Result<String> {
    let mut order: Vec<String> = Vec::new();
    let commands = old.iter().map(|r| r.command.clone()).chain(outcomes.iter().map(|o| format!("`make {}`", o.target)));
    for command in commands {
        if !order.contains(&command) {
            order.push(command);
        }
    }
    let mut out = format!("{BEGIN}\n{summary}\n\n{HEADER}");
    for command in &order {
        let outcome = outcomes.iter().find(|o| &format!("`make {}`", o.target) == command);
        let rows = match outcome.filter(|o| o.ok).map(|o| fresh(&o.target)).transpose()?.flatten() {
            Some(rows) => rows,
            None => old.iter().filter(|r| &r.command == command).cloned().collect(),
        };
        for row in rows {
            writeln!(out, "{}", row.line())?;
        }
    }
    out.push_str(END);
    Ok(out)
}

/// The rows between the markers of `doc`, and where the section starts and ends.
fn current(doc: &str) -> anyhow::Result<(Vec<Row>, usize, usize)> {
    let start = doc.find(BEGIN).context("docs/benchmarks.md has no `make bench: begin` marker")?;
    let end = doc[start..].find(END).context("docs/benchmarks.md has no `make bench: end` marker")? + start;
    let rows = doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `make "))
        .map(Row::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((rows, start, end + END.len()))
}

/// `cargo xtask bench-table DIR SUMMARY`: rewrites the table of docs/benchmarks.md from DIR's
/// `status.tsv` and `<target>.tsv` files (scripts/bench.sh writes them), with SUMMARY (the
/// run's line: date, machine, time) above it.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let [dir, summary] = args else { bail!("usage: cargo xtask bench-table DIR SUMMARY") };
    let dir = Path::new(dir);
    let status =
        std::fs::read_to_string(dir.join("status.tsv")).with_context(|| format!("{}/status.tsv", dir.display()))?;
    let outcomes = parse_status(&status)?;
    let fresh = |target: &str| -> anyhow::Result<Option<Vec<Row>>> {
        let path = dir.join(format!("{target}.tsv"));
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        let rows = text.lines().map(Row::parse).collect::<anyhow::Result<Vec<_>>>()?;
        Ok((!rows.is_empty()).then_some(rows))
    };
    let doc_path = super::workspace_root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let (old, start, end) = current(&doc)?;
    let new = section(summary, &outcomes, &fresh, &old)?;
    ensure!(new.lines().any(|l| l.starts_with("| `make ")), "no figures at all: docs/benchmarks.md left as it was");
    std::fs::write(&doc_path, format!("{}{new}{}", &doc[..start], &doc[end..]))?;
    println!(
        "docs/benchmarks.md: table rewritten ({} rows)",
        new.lines().filter(|l| l.starts_with("| `make ")).count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str, measure: &str, date: &str) -> Row {
        Row {
            command: format!("`make {target}`"),
            measure: measure.into(),
            ours: "1.00 ms".into(),
            baseline: "2.00 ms (docker run -d)".into(),
            ratio: "0.50".into(),
            goal: "≤ 1.15".into(),
            date: date.into(),
        }
    }

    #[test]
    fn a_row_reads_back_as_written_and_a_bar_in_a_cell_does_not_split_it() {
        let r = row("bench-api", "Identity p50", "2026-12-06 10:00");
        assert_eq!(Row::parse(&r.line()).unwrap(), r);
        let barred = Row { measure: "a | b".into(), ..r };
        assert_eq!(Row::parse(&barred.line()).unwrap().measure, "a / b");
        let err = Row::parse("| one | two |").unwrap_err().to_string();
        assert!(err.contains("7 cells, found 2"), "{err}");
    }

    #[test]
    fn values_keep_three_significant_digits() {
        assert_eq!(Value(311.24, "ms").render(), "311 ms");
        assert_eq!(Value(46.21, "ms").render(), "46.2 ms");
        assert_eq!(Value(1.154, "x").render(), "1.15 x");
        assert_eq!(Value(0.0312, "%").render(), "0.031 %");
    }

    #[test]
    fn a_failed_silent_or_not_run_benchmark_keeps_its_earlier_rows_and_a_passed_one_replaces_them() {
        let old = vec![
            row("bench-a", "old a", "2026-11-28 10:00"),
            row("bench-b", "old b", "2026-11-28 10:00"),
            row("bench-c", "old c", "2026-11-28 10:00"),
            row("bench-other", "not in this run", "2026-11-28 10:00"),
        ];
        let outcomes = parse_status("bench-a\tok\t12\nbench-b\tfailed\t3\nbench-c\tok\t5\nbench-d\tok\t7\n").unwrap();
        let fresh = |target: &str| -> anyhow::Result<Option<Vec<Row>>> {
            Ok(match target {
                "bench-a" => Some(vec![row("bench-a", "new a", "2026-12-06 10:00")]),
                "bench-b" => panic!("a failed benchmark's figures are not read"),
                "bench-d" => Some(vec![row("bench-d", "new d", "2026-12-06 10:05")]),
                _ => None,
            })
        };
        let text = section("run line", &outcomes, &fresh, &old).unwrap();
        let measures: Vec<String> =
            text.lines().filter(|l| l.starts_with("| `make ")).map(|l| Row::parse(l).unwrap().measure).collect();
        assert_eq!(measures, ["new a", "old b", "old c", "not in this run", "new d"]);
        assert!(text.starts_with(BEGIN) && text.ends_with(END) && text.contains("run line"));
        let (rows, start, end) = current(&format!("intro\n{text}\nrest")).unwrap();
        assert_eq!((rows.len(), start), (5, 6));
        assert_eq!(end, 6 + text.len());
    }

    #[test]
    fn a_bad_status_line_is_named() {
        let err = parse_status("bench-a\tmaybe\t3\n").unwrap_err().to_string();
        assert!(err.contains("`ok` or `failed`, found \"maybe\""), "{err}");
        assert!(parse_status("bench-a\tok\n").unwrap_err().to_string().contains("3 fields"));
    }
}
