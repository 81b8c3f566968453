//! The initialization progress display: the step list with a mark per step and row, redrawn in
//! place on a terminal, one line per change otherwise (logs, pipes).

use std::io::{IsTerminal, Write};

use serde_json::Value;

pub struct Progress {
    terminal: bool,
    lines_drawn: usize,
    last: String,
}

fn mark(state: &str) -> &'static str {
    match state {
        "done" => "\u{2713}",
        "running" => "\u{25b6}",
        "failed" => "\u{2717}",
        _ => "\u{b7}",
    }
}

/// The text of an initialization document (`GET /v1/init/{group}`).
pub fn render(init: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Configuration initialization of {} (version {}): {}\n",
        init["group"].as_str().unwrap_or("?"),
        init["version"],
        init["state"].as_str().unwrap_or("?")
    ));
    for step in init["steps"].as_array().into_iter().flatten() {
        let rows = step["rows"].as_array().cloned().unwrap_or_default();
        let step_state = step["state"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let states: Vec<&str> = rows.iter().filter_map(|r| r["state"].as_str()).collect();
                if states.contains(&"failed") {
                    "failed".into()
                } else if !states.is_empty() && states.iter().all(|s| *s == "done") {
                    "done".into()
                } else if states.iter().any(|s| *s == "running" || *s == "done") {
                    "running".into()
                } else {
                    "pending".into()
                }
            });
        out.push_str(&format!(
            "  {} {:>2}. {}\n",
            mark(&step_state),
            step["number"],
            step["title"].as_str().unwrap_or("")
        ));
        if rows.len() > 1
            || rows
                .iter()
                .any(|r| r.get("server").is_some() || r.get("volume").is_some())
        {
            for row in &rows {
                let state = row["state"].as_str().unwrap_or("pending");
                let label = match (row["server"].as_str(), row["volume"].as_str()) {
                    (Some(server), _) => match row["role"].as_str() {
                        Some(role) => format!("{server} ({role})"),
                        None => server.to_string(),
                    },
                    (None, Some(volume)) => format!("volume {volume}"),
                    _ => String::new(),
                };
                if label.is_empty() {
                    continue;
                }
                out.push_str(&format!("        {} {label}\n", mark(state)));
                if let Some(error) = row["error"].as_str() {
                    out.push_str(&format!("          error: {error}\n"));
                }
            }
        } else if let Some(error) = rows.first().and_then(|r| r["error"].as_str()) {
            out.push_str(&format!("          error: {error}\n"));
        }
    }
    out
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            lines_drawn: 0,
            last: String::new(),
        }
    }

    pub fn show(&mut self, init: &Value) {
        let text = render(init);
        if text == self.last {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if self.terminal {
            if self.lines_drawn > 0 {
                // Up to the first line we drew, and clear from there down.
                let _ = write!(stdout, "\x1b[{}A\x1b[J", self.lines_drawn);
            }
            let _ = write!(stdout, "{text}");
            self.lines_drawn = text.lines().count();
        } else {
            // Not a terminal: print only the lines that changed.
            let previous: Vec<&str> = self.last.lines().collect();
            for (index, line) in text.lines().enumerate() {
                if previous.get(index) != Some(&line) {
                    let _ = writeln!(stdout, "{}", line.trim_start());
                }
            }
        }
        let _ = stdout.flush();
        self.last = text;
    }
}
