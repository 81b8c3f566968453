//! The dashboard's memory of the last hour: the console samples `GET /v1/status` every
//! [`SAMPLE_INTERVAL_MS`] into a bounded ring per group, and draws speed and backlog as SVG.
//! Pure: the sampler task (in `web::mod`) hands in the time and the status document.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;

use serde_json::Value;

/// One sample every 10 s ...
pub const SAMPLE_INTERVAL_MS: u64 = 10_000;
/// ... and 360 of them: the last hour.
pub const SAMPLES_PER_GROUP_MAX: usize = 360;
/// Groups remembered at most (the configuration's groups; a removed group ages out).
pub const GROUPS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub time_unix_ms: u64,
    /// Sum over the group's targets of what production sends them (MB/s).
    pub speed_mb_s: f64,
    /// The largest backlog of the group's targets: bytes production holds that a target has
    /// not made durable yet.
    pub backlog_bytes: u64,
    /// The largest lag (RPO) of the group's targets, in seconds.
    pub lag_seconds: f64,
}

#[derive(Debug, Default)]
pub struct History {
    groups: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Records one status document (`GET /v1/status`) taken at `time_unix_ms`.
    pub fn record(&mut self, time_unix_ms: u64, status: &Value) {
        for group in status["groups"].as_array().into_iter().flatten() {
            let Some(name) = group["name"].as_str() else {
                continue;
            };
            let targets = group["targets"].as_array().cloned().unwrap_or_default();
            let sample = Sample {
                time_unix_ms,
                speed_mb_s: targets
                    .iter()
                    .filter_map(|t| t["speed_mb_s"].as_f64())
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .sum(),
                backlog_bytes: targets
                    .iter()
                    .filter_map(|t| t["backlog_bytes"].as_u64())
                    .max()
                    .unwrap_or(0),
                lag_seconds: targets
                    .iter()
                    .filter_map(|t| t["lag_seconds"].as_f64())
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .fold(0.0, f64::max),
            };
            if !self.groups.contains_key(name) && self.groups.len() >= GROUPS_MAX {
                continue;
            }
            let ring = self.groups.entry(name.to_string()).or_default();
            if ring.len() == SAMPLES_PER_GROUP_MAX {
                ring.pop_front();
            }
            ring.push_back(sample);
            assert!(ring.len() <= SAMPLES_PER_GROUP_MAX);
        }
    }

    pub fn samples(&self, group: &str) -> Vec<Sample> {
        self.groups
            .get(group)
            .map(|ring| ring.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Plot size in SVG user units.
const PLOT_WIDTH: f64 = 360.0;
const PLOT_HEIGHT: f64 = 90.0;
/// The plots span at most one hour, ending now ...
const PLOT_SPAN_MS: u64 = 3_600_000;
/// ... and at least one minute.
const PLOT_SPAN_MIN_MS: u64 = 60_000;

/// An SVG line plot of `values` (time, value) over the hour ending at `now_unix_ms`, with the
/// latest value and the peak in its title. `unit` labels the axis.
pub fn svg_plot(title: &str, unit: &str, now_unix_ms: u64, values: &[(u64, f64)]) -> String {
    let peak = values.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let top = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    // The hour ending now, or less while the console has not sampled for an hour yet (at
    // least a minute, so a fresh console's first samples are readable).
    let span_ms = values
        .first()
        .map_or(PLOT_SPAN_MS, |(first, _)| {
            now_unix_ms.saturating_sub(*first)
        })
        .clamp(PLOT_SPAN_MIN_MS, PLOT_SPAN_MS);
    let start = now_unix_ms.saturating_sub(span_ms);
    let point = |(time, value): (u64, f64)| {
        let x = (time.saturating_sub(start).min(span_ms) as f64 / span_ms as f64) * PLOT_WIDTH;
        let y = PLOT_HEIGHT - (value / top).clamp(0.0, 1.0) * PLOT_HEIGHT;
        format!("{x:.1},{y:.1}")
    };
    let points: Vec<String> = values.iter().copied().map(point).collect();
    let latest = values.last().map_or(0.0, |(_, v)| *v);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{t}: {latest:.1} {u} now, peak {peak:.1} {u} (last hour)</title>\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" class=\"plot-bg\"/>",
        w = PLOT_WIDTH,
        h = PLOT_HEIGHT,
        t = super::pages::escape(title),
        u = super::pages::escape(unit),
    );
    for fraction in [0.25, 0.5, 0.75] {
        let y = PLOT_HEIGHT * fraction;
        let _ = write!(
            svg,
            "<line x1=\"0\" y1=\"{y:.1}\" x2=\"{PLOT_WIDTH}\" y2=\"{y:.1}\" class=\"plot-grid\"/>"
        );
    }
    if points.len() == 1 {
        let _ = write!(
            svg,
            "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" class=\"plot-line\"/>",
            points[0].split(',').next().unwrap_or("0"),
            points[0].split(',').nth(1).unwrap_or("0")
        );
    } else if !points.is_empty() {
        let _ = write!(
            svg,
            "<polyline points=\"{}\" class=\"plot-line\" fill=\"none\"/>",
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"12\" class=\"plot-label\">{:.1} {}</text>\
         <text x=\"4\" y=\"{}\" class=\"plot-label\">-{} min</text>\
         <text x=\"{}\" y=\"{}\" class=\"plot-label\" text-anchor=\"end\">now</text></svg>",
        top,
        super::pages::escape(unit),
        PLOT_HEIGHT - 3.0,
        span_ms.div_ceil(60_000),
        PLOT_WIDTH - 4.0,
        PLOT_HEIGHT - 3.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(speed: f64, backlog: u64) -> Value {
        json!({"groups": [{"name": "erp", "targets": [
            {"speed_mb_s": speed, "backlog_bytes": backlog, "lag_seconds": 0.5},
            {"speed_mb_s": 1.0, "backlog_bytes": 10, "lag_seconds": 2.0},
        ]}]})
    }

    #[test]
    fn the_ring_keeps_the_last_hour_and_folds_targets() {
        let mut history = History::default();
        for index in 0..(SAMPLES_PER_GROUP_MAX as u64 + 5) {
            history.record(
                index * SAMPLE_INTERVAL_MS,
                &status(index as f64, index * 100),
            );
        }
        let samples = history.samples("erp");
        assert_eq!(samples.len(), SAMPLES_PER_GROUP_MAX);
        assert_eq!(
            samples[0].time_unix_ms,
            5 * SAMPLE_INTERVAL_MS,
            "oldest dropped"
        );
        let last = samples[SAMPLES_PER_GROUP_MAX - 1];
        assert_eq!(
            last.speed_mb_s,
            (SAMPLES_PER_GROUP_MAX as f64 + 4.0) + 1.0,
            "speeds add up"
        );
        assert_eq!(
            last.backlog_bytes,
            (SAMPLES_PER_GROUP_MAX as u64 + 4) * 100,
            "largest backlog"
        );
        assert_eq!(last.lag_seconds, 2.0, "largest lag");
        assert!(history.samples("other").is_empty());
    }

    #[test]
    fn the_plot_spans_the_hour_and_names_its_peak() {
        let now = 10 * PLOT_SPAN_MS;
        let svg = svg_plot(
            "speed",
            "MB/s",
            now,
            &[
                (now - PLOT_SPAN_MS, 0.0),
                (now - PLOT_SPAN_MS / 2, 50.0),
                (now, 25.0),
            ],
        );
        assert!(
            svg.contains("points=\"0.0,90.0 180.0,8.2 360.0,49.1\""),
            "{svg}"
        );
        assert!(svg.contains("25.0 MB/s now, peak 50.0 MB/s"), "{svg}");
        assert!(svg.contains(">-60 min<"), "{svg}");
        let empty = svg_plot("backlog", "MiB", now, &[]);
        assert!(!empty.contains("polyline"), "{empty}");
        // A console that sampled for 5 minutes plots those 5 minutes across the width.
        let young = svg_plot("speed", "MB/s", now, &[(now - 300_000, 1.0), (now, 1.0)]);
        assert!(young.contains("points=\"0.0,8.2 360.0,8.2\""), "{young}");
        assert!(young.contains(">-5 min<"), "{young}");
    }
}
