//! Process-wide metrics (SPEC §12): counters, gauges and summaries (count + sum) with
//! labels, kept in one registry, rendered as Prometheus text (`GET /metrics`) or JSON
//! (`GET /v1alpha1/metrics`). Actors record as they work; the API adds gauges read
//! from the store when it is scraped.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What kind a metric is, for Prometheus' `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Default)]
struct Family {
    kind: Option<Kind>,
    help: String,
    /// Per label set: the value (counter, gauge) or (count, sum) of a summary.
    series: BTreeMap<Labels, (f64, f64)>,
}

/// A set of metric families.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Registry {
    fn with(&self, name: &str, kind: Kind, help: &str, f: impl FnOnce(&mut Family)) {
        if let Ok(mut families) = self.families.lock() {
            let family = families.entry(name.to_owned()).or_default();
            family.kind.get_or_insert(kind);
            if family.help.is_empty() {
                help.clone_into(&mut family.help);
            }
            f(family);
        }
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &str, help: &str, pairs: &[(&str, &str)], by: f64) {
        self.with(name, Kind::Counter, help, |f| {
            f.series.entry(labels(pairs)).or_default().0 += by;
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, help: &str, pairs: &[(&str, &str)], value: f64) {
        self.with(name, Kind::Gauge, help, |f| {
            f.series.insert(labels(pairs), (value, 0.0));
        });
    }

    /// Replaces every series of a gauge family (for gauges recomputed as a whole).
    pub fn set_all(&self, name: &str, help: &str, series: Vec<(Labels, f64)>) {
        self.with(name, Kind::Gauge, help, |f| {
            f.series = series.into_iter().map(|(l, v)| (l, (v, 0.0))).collect();
        });
    }

    /// Records one observation of a duration.
    pub fn observe(&self, name: &str, help: &str, pairs: &[(&str, &str)], took: Duration) {
        self.with(name, Kind::Summary, help, |f| {
            let s = f.series.entry(labels(pairs)).or_default();
            s.0 += 1.0;
            s.1 += took.as_secs_f64();
        });
    }

    /// The current value of a counter or gauge (the count, for a summary).
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        let families = self.families.lock().ok()?;
        families
            .get(name)
            .and_then(|f| f.series.get(&labels(pairs)))
            .map(|s| s.0)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let Ok(families) = self.families.lock() else {
            return out;
        };
        for (name, f) in families.iter() {
            let kind = f.kind.unwrap_or(Kind::Gauge);
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", kind.name());
            for (labels, (a, b)) in &f.series {
                let l = render_labels(labels);
                if kind == Kind::Summary {
                    let _ = writeln!(out, "{name}_count{l} {a}");
                    let _ = writeln!(out, "{name}_sum{l} {b}");
                } else {
                    let _ = writeln!(out, "{name}{l} {a}");
                }
            }
        }
        out
    }

    /// The same as JSON: `{"name": {"type", "help", "series": [{"labels", "value"}]}}`
    /// (summaries: `count` and `sum`).
    pub fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let Ok(families) = self.families.lock() else {
            return serde_json::Value::Object(out);
        };
        for (name, f) in families.iter() {
            let kind = f.kind.unwrap_or(Kind::Gauge);
            let series: Vec<serde_json::Value> = f
                .series
                .iter()
                .map(|(labels, (a, b))| {
                    let labels: serde_json::Map<String, serde_json::Value> = labels
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect();
                    if kind == Kind::Summary {
                        serde_json::json!({"labels": labels, "count": a, "sum": b})
                    } else {
                        serde_json::json!({"labels": labels, "value": a})
                    }
                })
                .collect();
            out.insert(
                name.clone(),
                serde_json::json!({"type": kind.name(), "help": f.help, "series": series}),
            );
        }
        serde_json::Value::Object(out)
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The process's registry.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

/// This process's resident memory, from `/proc/self/status`.
pub fn resident_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_summaries_render_as_prometheus_text() {
        let r = Registry::default();
        r.inc("kat_things_total", "Things.", &[("kind", "a")], 1.0);
        r.inc("kat_things_total", "Things.", &[("kind", "a")], 2.0);
        r.inc("kat_things_total", "Things.", &[("kind", "b\"q")], 1.0);
        r.set("kat_level", "A level.", &[], 7.5);
        r.observe("kat_took_seconds", "Time.", &[], Duration::from_millis(250));
        r.observe("kat_took_seconds", "Time.", &[], Duration::from_millis(750));
        let text = r.render();
        assert!(text.contains("# TYPE kat_things_total counter\n"), "{text}");
        assert!(text.contains("kat_things_total{kind=\"a\"} 3\n"), "{text}");
        assert!(
            text.contains("kat_things_total{kind=\"b\\\"q\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kat_level 7.5\n"), "{text}");
        assert!(text.contains("kat_took_seconds_count 2\n"), "{text}");
        assert!(text.contains("kat_took_seconds_sum 1\n"), "{text}");
        assert_eq!(r.value("kat_things_total", &[("kind", "a")]), Some(3.0));
        let json = r.json();
        assert_eq!(json["kat_took_seconds"]["series"][0]["count"], 2.0);
        assert_eq!(json["kat_level"]["type"], "gauge");
    }

    #[test]
    fn set_all_replaces_a_gauge_family() {
        let r = Registry::default();
        r.set_all(
            "kat_nodes",
            "Nodes.",
            vec![(labels(&[("state", "READY")]), 2.0)],
        );
        r.set_all(
            "kat_nodes",
            "Nodes.",
            vec![(labels(&[("state", "NOT_READY")]), 1.0)],
        );
        let text = r.render();
        assert!(!text.contains("READY\"} 2"), "{text}");
        assert!(text.contains("kat_nodes{state=\"NOT_READY\"} 1"), "{text}");
    }
}
