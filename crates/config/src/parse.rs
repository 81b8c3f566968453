//! TOML text → [`Config`], collecting every error with its file, line, field and reason.
//!
//! We walk toml's spanned document tree by hand instead of deriving `Deserialize`: serde stops
//! at the first error, and users asked for all of them at once.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::model::*;
use crate::units::{parse_duration_seconds, parse_rate_bytes_per_second, parse_size_bytes, Bytes};

/// Most bytes a configuration file may have; a larger one is certainly not a config.
pub const CONFIG_FILE_BYTES_MAX: usize = 16 << 20;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the document: `group[erp].volume[lv_data01].size`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.reason
        )
    }
}

/// Parses and validates one configuration file's text.
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut checker = Checker::new(file, text);
    if text.len() > CONFIG_FILE_BYTES_MAX {
        checker.error(
            0..0,
            "(file)",
            format!(
                "the file has {} bytes; the limit is {CONFIG_FILE_BYTES_MAX}",
                text.len()
            ),
        );
        return Err(checker.diagnostics);
    }
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().trim().to_string();
            checker.error(span, "(syntax)", format!("invalid TOML: {message}"));
        }
        return Err(checker.diagnostics);
    }
    let config = checker.document(document.get_ref(), document.span());
    if checker.diagnostics.is_empty() {
        Ok(config)
    } else {
        checker.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(checker.diagnostics)
    }
}

/// Reads and parses a configuration file; I/O problems become a diagnostic too.
pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let file = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse(&file, &text),
            Err(error) => Err(vec![Diagnostic {
                file,
                line: 1,
                column: 1,
                field: "(file)".into(),
                reason: format!(
                    "not UTF-8 text (first bad byte at offset {})",
                    error.utf8_error().valid_up_to()
                ),
            }]),
        },
        Err(error) => Err(vec![Diagnostic {
            file,
            line: 0,
            column: 0,
            field: "(file)".into(),
            reason: format!("cannot read the file: {error}"),
        }]),
    }
}

type Span = Range<usize>;

/// Where a server's fields that cross-server checks report on are written.
struct ServerSpans {
    address: Span,
    nbd_listen: Span,
}

struct Checker<'s> {
    file: String,
    text: &'s str,
    line_starts: Vec<usize>,
    diagnostics: Vec<Diagnostic>,
}

/// A table being read: remembers which keys were consumed so leftovers are reported as unknown.
struct TableReader<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Span,
    path: String,
    known: &'static [&'static str],
}

/// Names a server may not have: they are identities of the certificate layout (`tls`).
pub const RESERVED_SERVER_NAMES: [&str; 2] = ["console", "ca"];

const SERVER_FIELDS: &[&str] = &["name", "address", "data_dir", "nbd_listen", "nbd_tls"];
const GROUP_FIELDS: &[&str] = &[
    "name",
    "production",
    "recovery",
    "mode",
    "retention",
    "throttle",
    "compression",
    "containers",
    "volume",
];
const CONTAINER_FIELDS: &[&str] = &["replication", "log_record_file", "snapshot"];
const VOLUME_FIELDS: &[&str] = &["name", "size", "source"];
const TOP_FIELDS: &[&str] = &["server", "group"];

const DEFAULT_RETENTION_SECONDS: u64 = 24 * 3600;

impl<'s> Checker<'s> {
    fn new(file: &str, text: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(index, _)| index + 1));
        Checker {
            file: file.to_string(),
            text,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    fn error(&mut self, span: Span, field: impl Into<String>, reason: impl Into<String>) {
        let offset = span.start.min(self.text.len());
        let line_index = self.line_starts.partition_point(|start| *start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(1, |prefix| prefix.chars().count() + 1);
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line: line_index + 1,
            column,
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn document(&mut self, table: &DeTable<'_>, span: Span) -> Config {
        let top = TableReader {
            table,
            span,
            path: String::new(),
            known: TOP_FIELDS,
        };
        self.unknown_fields(&top);
        let mut server_spans: Vec<(Server, ServerSpans)> = Vec::new();
        // Names of every [[server]], valid or not, so that one bad field does not also make
        // every group that names the server report it as unknown.
        let mut named: Vec<(String, Span)> = Vec::new();
        for (entry, entry_span, index) in self.array_of_tables(&top, "server") {
            let (name, server) = self.server(entry, entry_span.clone(), index);
            if let Some(name) = name {
                named.push((name, entry_span.clone()));
            }
            if let Some(server) = server {
                server_spans.push(server);
            }
        }
        self.check_server_names(&named);
        self.check_servers(&server_spans);
        let servers: Vec<Server> = server_spans.into_iter().map(|(server, _)| server).collect();
        let server_names: Vec<&str> = named.iter().map(|(name, _)| name.as_str()).collect();

        let mut groups: Vec<Group> = Vec::new();
        let mut group_spans: HashMap<String, Span> = HashMap::new();
        for (entry, entry_span, index) in self.array_of_tables(&top, "group") {
            if let Some(group) = self.group(entry, entry_span.clone(), index, &server_names) {
                if let Some(previous) = group_spans.get(&group.name) {
                    let previous_line = self.line_of(previous.start);
                    self.error(
                        entry_span,
                        format!("group[{}].name", group.name),
                        format!(
                            "duplicate group name `{}` (first defined on line {previous_line})",
                            group.name
                        ),
                    );
                    continue;
                }
                group_spans.insert(group.name.clone(), entry_span);
                groups.push(group);
            }
        }
        Config { servers, groups }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset)
    }

    fn unknown_fields(&mut self, reader: &TableReader<'_, '_>) {
        for key in reader.table.keys() {
            let name: &str = key.get_ref();
            if !reader.known.contains(&name) {
                let field = join(&reader.path, name);
                let known = reader.known.join(", ");
                self.error(
                    key.span(),
                    field,
                    format!("unknown field `{name}`; expected one of: {known}"),
                );
            }
        }
    }

    /// Entries of `[[key]]`. A single `[key]` table is accepted as an array of one.
    fn array_of_tables<'a, 'i>(
        &mut self,
        reader: &TableReader<'a, 'i>,
        key: &str,
    ) -> Vec<(&'a DeTable<'i>, Span, usize)> {
        let mut entries = Vec::new();
        let Some(value) = reader.table.get(key) else {
            return entries;
        };
        match value.get_ref() {
            DeValue::Array(array) => {
                for (index, item) in array.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::Table(table) => entries.push((table, item.span(), index)),
                        other => self.error(
                            item.span(),
                            format!("{}[{index}]", join(&reader.path, key)),
                            format!("expected a table ([[{key}]]), found {}", other.type_str()),
                        ),
                    }
                }
            }
            DeValue::Table(table) => entries.push((table, value.span(), 0)),
            other => self.error(
                value.span(),
                join(&reader.path, key),
                format!(
                    "expected tables written as [[{key}]], found {}",
                    other.type_str()
                ),
            ),
        }
        entries
    }

    fn string(
        &mut self,
        reader: &TableReader<'_, '_>,
        key: &str,
        required: bool,
    ) -> Option<(String, Span)> {
        let field = join(&reader.path, key);
        match reader.table.get(key) {
            None => {
                if required {
                    self.error(
                        reader.span.clone(),
                        field,
                        format!("missing required field `{key}`"),
                    );
                }
                None
            }
            Some(value) => match value.get_ref() {
                DeValue::String(text) => Some((text.to_string(), value.span())),
                other => {
                    self.error(
                        value.span(),
                        field,
                        format!("expected a string, found {}", other.type_str()),
                    );
                    None
                }
            },
        }
    }

    /// A size: a string with a unit, or a bare integer meaning bytes.
    fn size(&mut self, reader: &TableReader<'_, '_>, key: &str) -> Option<(u64, Span)> {
        let field = join(&reader.path, key);
        let value = match reader.table.get(key) {
            None => {
                self.error(
                    reader.span.clone(),
                    field,
                    format!("missing required field `{key}`"),
                );
                return None;
            }
            Some(value) => value,
        };
        let parsed = match value.get_ref() {
            DeValue::String(text) => parse_size_bytes(text),
            DeValue::Integer(integer) => u64::from_str_radix(integer.as_str(), integer.radix())
                .map_err(|_| format!("`{}` is not a byte count", integer.as_str())),
            other => Err(format!(
                "expected a size such as \"10GiB\", found {}",
                other.type_str()
            )),
        };
        match parsed {
            Ok(bytes) => Some((bytes, value.span())),
            Err(reason) => {
                self.error(value.span(), field, reason);
                None
            }
        }
    }

    fn name(&mut self, reader: &TableReader<'_, '_>, what: &str) -> Option<(String, Span)> {
        let (name, span) = self.string(reader, "name", true)?;
        if !is_valid_name(&name) {
            self.error(
                span,
                join(&reader.path, "name"),
                format!(
                    "invalid {what} name `{name}`: use 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
                ),
            );
            return None;
        }
        Some((name, span))
    }

    fn server(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        index: usize,
    ) -> (Option<String>, Option<(Server, ServerSpans)>) {
        let mut name = None;
        let server = self.server_fields(table, span.clone(), index, &mut name);
        let key_span = |key: &str| table.get(key).map_or(span.clone(), |value| value.span());
        let spans = ServerSpans {
            address: key_span("address"),
            nbd_listen: key_span("nbd_listen"),
        };
        (name, server.map(|server| (server, spans)))
    }

    fn server_fields(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        index: usize,
        raw_name: &mut Option<String>,
    ) -> Option<Server> {
        let mut reader = TableReader {
            table,
            span,
            path: format!("server[{index}]"),
            known: SERVER_FIELDS,
        };
        let name = self.name(&reader, "server");
        // Kept as the server's name after the error, so its references do not fail as well.
        let name = name.map(|(name, span)| {
            if RESERVED_SERVER_NAMES.contains(&name.as_str()) {
                self.error(
                    span.clone(),
                    join(&reader.path, "name"),
                    format!(
                        "server name `{name}` is reserved: `console` is the console's certificate identity (a server named so could act as the console towards every agent) and `ca` the cluster CA's; choose another name"
                    ),
                );
            }
            (name, span)
        });
        if let Some((name, _)) = &name {
            reader.path = format!("server[{name}]");
            *raw_name = Some(name.clone());
        }
        self.unknown_fields(&reader);
        let address = self.string(&reader, "address", true);
        let address = address.and_then(|(address, span)| match check_host_port(&address) {
            Ok(()) => Some(address),
            Err(reason) => {
                self.error(span, join(&reader.path, "address"), reason);
                None
            }
        });
        let data_dir =
            self.string(&reader, "data_dir", true)
                .and_then(|(dir, span)| {
                    let path = PathBuf::from(&dir);
                    if path.is_absolute() && !dir.contains('\0') {
                        Some(path)
                    } else {
                        self.error(
                    span,
                    join(&reader.path, "data_dir"),
                    format!("`{dir}` must be an absolute path (agents may run from any directory)"),
                );
                        None
                    }
                });
        let mut nbd_ok = true;
        let nbd_listen = match self.string(&reader, "nbd_listen", false) {
            None => None,
            Some((text, span)) => match parse_nbd_listen(&text) {
                Ok(listen) => Some(listen),
                Err(reason) => {
                    self.error(span, join(&reader.path, "nbd_listen"), reason);
                    nbd_ok = false;
                    None
                }
            },
        };
        let nbd_tls = match reader.table.get("nbd_tls") {
            None => Some(false),
            Some(value) => match value.get_ref() {
                DeValue::Boolean(on) => Some(*on),
                other => {
                    self.error(
                        value.span(),
                        join(&reader.path, "nbd_tls"),
                        format!("expected true or false, found {}", other.type_str()),
                    );
                    None
                }
            },
        };
        let nbd_tls = nbd_tls?;
        if nbd_tls && nbd_listen.is_none() && nbd_ok {
            let span = reader
                .table
                .get("nbd_tls")
                .map_or(reader.span.clone(), |value| value.span());
            self.error(
                span,
                join(&reader.path, "nbd_tls"),
                "nbd_tls = true needs nbd_listen (the exports it protects)".to_string(),
            );
            return None;
        }
        Some(Server {
            name: name?.0,
            address: address?,
            data_dir: data_dir?,
            nbd_listen: if nbd_ok { nbd_listen } else { return None },
            nbd_tls,
        })
    }

    fn check_server_names(&mut self, named: &[(String, Span)]) {
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        for (name, span) in named {
            if let Some(first_line) = first_lines.get(name.as_str()) {
                self.error(
                    span.clone(),
                    format!("server[{name}].name"),
                    format!("duplicate server name `{name}` (first defined on line {first_line})"),
                );
            } else {
                first_lines.insert(name, self.line_of(span.start));
            }
        }
    }

    fn check_servers(&mut self, servers: &[(Server, ServerSpans)]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<&str, (&str, usize)> = HashMap::new();
        let mut listens: HashMap<String, (&str, usize)> = HashMap::new();
        for (server, spans) in servers {
            let line = self.line_of(spans.address.start);
            if names.contains_key(server.name.as_str()) {
                // Reported by check_server_names.
                continue;
            }
            names.insert(&server.name, line);
            if let Some((other, _)) = addresses.get(server.address.as_str()) {
                self.error(
                    spans.address.clone(),
                    format!("server[{}].address", server.name),
                    format!(
                        "address `{}` is already used by server `{other}`",
                        server.address
                    ),
                );
            } else {
                addresses.insert(&server.address, (&server.name, line));
            }
            if let Some(listen) = &server.nbd_listen {
                let key = listen.to_string();
                if let Some((other, _)) = listens.get(&key) {
                    self.error(
                        spans.nbd_listen.clone(),
                        format!("server[{}].nbd_listen", server.name),
                        format!("nbd_listen `{key}` is already used by server `{other}`"),
                    );
                } else {
                    listens.insert(key, (&server.name, line));
                }
            }
        }
    }

    fn group(
        &mut self,
        table: &DeTable<'_>,
        span: Span,
        index: usize,
        servers: &[&str],
    ) -> Option<Group> {
        let mut reader = TableReader {
            table,
            span: span.clone(),
            path: format!("group[{index}]"),
            known: GROUP_FIELDS,
        };
        let name = self.name(&reader, "group");
        if let Some((name, _)) = &name {
            reader.path = format!("group[{name}]");
        }
        self.unknown_fields(&reader);
        let path = reader.path.clone();
        let mut valid = true;

        let production = self.string(&reader, "production", true);
        if let Some((production, span)) = &production {
            if !servers.contains(&production.as_str()) {
                self.error(
                    span.clone(),
                    join(&path, "production"),
                    format!("unknown server `{production}`: no [[server]] has this name"),
                );
                valid = false;
            }
        }
        let recovery = self.recovery(
            &reader,
            servers,
            production.as_ref().map(|(p, _)| p.as_str()),
        );
        valid &= recovery.is_some();

        let mode = match self.string(&reader, "mode", false) {
            None => Some(Mode::Async),
            Some((text, span)) => match text.as_str() {
                "async" => Some(Mode::Async),
                "sync" => Some(Mode::Sync),
                other => {
                    self.error(
                        span,
                        join(&path, "mode"),
                        format!("unknown mode `{other}`: use \"async\" or \"sync\""),
                    );
                    None
                }
            },
        };
        let retention_seconds = match self.string(&reader, "retention", false) {
            None => Some(DEFAULT_RETENTION_SECONDS),
            Some((text, span)) => match parse_duration_seconds(&text) {
                Ok(0) => {
                    self.error(
                        span,
                        join(&path, "retention"),
                        "retention must be longer than 0s",
                    );
                    None
                }
                Ok(seconds) => Some(seconds),
                Err(reason) => {
                    self.error(span, join(&path, "retention"), reason);
                    None
                }
            },
        };
        let throttle = match self.string(&reader, "throttle", false) {
            None => Some(0),
            Some((text, span)) => match parse_rate_bytes_per_second(&text) {
                Ok(rate) => Some(rate),
                Err(reason) => {
                    self.error(span, join(&path, "throttle"), reason);
                    None
                }
            },
        };
        let compression = match self.string(&reader, "compression", false) {
            None => Some(Compression::Zstd),
            Some((text, span)) => match text.as_str() {
                "none" => Some(Compression::None),
                "zstd" => Some(Compression::Zstd),
                other => {
                    self.error(
                        span,
                        join(&path, "compression"),
                        format!("unknown compression `{other}`: use \"none\" or \"zstd\""),
                    );
                    None
                }
            },
        };
        let containers = self.containers(&reader);
        let volumes = self.volumes(&reader);
        if let (Some(containers), Some(volumes)) = (&containers, &volumes) {
            let needed: u64 = volumes.iter().map(|volume| volume.size_bytes).sum();
            if needed > containers.replication_bytes {
                let span = reader
                    .table
                    .get("containers")
                    .and_then(|c| {
                        c.get_ref()
                            .as_table()
                            .and_then(|t| t.get("replication"))
                            .map(|v| v.span())
                    })
                    .unwrap_or(span.clone());
                self.error(
                    span,
                    join(&path, "containers.replication"),
                    format!(
                        "the replication container holds {} but the group's volumes need {} on each recovery server",
                        Bytes(containers.replication_bytes),
                        Bytes(needed)
                    ),
                );
                valid = false;
            }
        }
        if !valid {
            return None;
        }
        Some(Group {
            name: name?.0,
            production: production?.0,
            recovery: recovery?,
            mode: mode?,
            retention_seconds: retention_seconds?,
            throttle_bytes_per_second: throttle?,
            compression: compression?,
            containers: containers?,
            volumes: volumes?,
        })
    }

    fn recovery(
        &mut self,
        reader: &TableReader<'_, '_>,
        servers: &[&str],
        production: Option<&str>,
    ) -> Option<Vec<String>> {
        let field = join(&reader.path, "recovery");
        let Some(value) = reader.table.get("recovery") else {
            self.error(
                reader.span.clone(),
                field,
                "missing required field `recovery` (1 or 2 recovery server names)",
            );
            return None;
        };
        let items: Vec<(String, Span)> = match value.get_ref() {
            DeValue::Array(array) => {
                let mut names = Vec::new();
                for item in array.iter() {
                    match item.get_ref() {
                        DeValue::String(name) => names.push((name.to_string(), item.span())),
                        other => {
                            self.error(
                                item.span(),
                                field.clone(),
                                format!("expected a server name, found {}", other.type_str()),
                            );
                            return None;
                        }
                    }
                }
                names
            }
            DeValue::String(name) => vec![(name.to_string(), value.span())],
            other => {
                self.error(
                    value.span(),
                    field,
                    format!(
                        "expected a list of server names, found {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        let mut valid = true;
        if items.is_empty() || items.len() > RECOVERY_SERVERS_PER_GROUP_MAX {
            self.error(
                value.span(),
                field.clone(),
                format!("a group has 1 or 2 recovery servers, found {}", items.len()),
            );
            valid = false;
        }
        for (index, (name, span)) in items.iter().enumerate() {
            if !servers.contains(&name.as_str()) {
                self.error(
                    span.clone(),
                    field.clone(),
                    format!("unknown server `{name}`: no [[server]] has this name"),
                );
                valid = false;
            } else if Some(name.as_str()) == production {
                self.error(
                    span.clone(),
                    field.clone(),
                    format!("server `{name}` is the group's production server and cannot also be a recovery server"),
                );
                valid = false;
            } else if items[..index].iter().any(|(other, _)| other == name) {
                self.error(
                    span.clone(),
                    field.clone(),
                    format!("server `{name}` is listed twice"),
                );
                valid = false;
            }
        }
        valid.then(|| items.into_iter().map(|(name, _)| name).collect())
    }

    fn containers(&mut self, group: &TableReader<'_, '_>) -> Option<Containers> {
        let field = join(&group.path, "containers");
        let Some(value) = group.table.get("containers") else {
            self.error(
                group.span.clone(),
                field,
                "missing required table [group.containers] (replication, log_record_file, snapshot sizes)",
            );
            return None;
        };
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                field,
                format!("expected a table, found {}", value.get_ref().type_str()),
            );
            return None;
        };
        let reader = TableReader {
            table,
            span: value.span(),
            path: field,
            known: CONTAINER_FIELDS,
        };
        self.unknown_fields(&reader);
        let replication = self.size(&reader, "replication");
        let log_record_file = self.size(&reader, "log_record_file");
        let snapshot = self.size(&reader, "snapshot");
        if let Some((bytes, span)) = &log_record_file {
            if *bytes < LOG_RECORD_FILE_BYTES_MIN {
                self.error(
                    span.clone(),
                    join(&reader.path, "log_record_file"),
                    format!(
                        "the log record file container must hold at least {}",
                        Bytes(LOG_RECORD_FILE_BYTES_MIN)
                    ),
                );
                return None;
            }
        }
        Some(Containers {
            replication_bytes: replication?.0,
            log_record_file_bytes: log_record_file?.0,
            snapshot_bytes: snapshot?.0,
        })
    }

    fn volumes(&mut self, group: &TableReader<'_, '_>) -> Option<Vec<Volume>> {
        let entries = self.array_of_tables(group, "volume");
        if entries.is_empty() {
            self.error(
                group.span.clone(),
                join(&group.path, "volume"),
                "a group needs at least one [[group.volume]]",
            );
            return None;
        }
        if entries.len() > VOLUMES_PER_GROUP_MAX {
            self.error(
                group.span.clone(),
                join(&group.path, "volume"),
                format!(
                    "a group has at most {VOLUMES_PER_GROUP_MAX} volumes, found {}",
                    entries.len()
                ),
            );
            return None;
        }
        let mut volumes = Vec::new();
        let mut valid = true;
        let mut first_lines: HashMap<String, usize> = HashMap::new();
        let mut sources: HashMap<PathBuf, String> = HashMap::new();
        for (table, span, index) in entries {
            let mut raw_name = None;
            let volume = self.volume(group, table, span.clone(), index, &mut raw_name);
            if let Some(name) = raw_name {
                if let Some(first_line) = first_lines.get(&name) {
                    self.error(
                        span,
                        format!("{}.volume[{name}].name", group.path),
                        format!(
                            "duplicate volume name `{name}` (first defined on line {first_line})"
                        ),
                    );
                    valid = false;
                    continue;
                }
                first_lines.insert(name, self.line_of(span.start));
            }
            match volume {
                Some(volume) => {
                    if let Some(source) = &volume.source {
                        if let Some(other) = sources.get(source) {
                            self.error(
                                span.clone(),
                                format!("{}.volume[{}].source", group.path, volume.name),
                                format!(
                                    "source `{}` is already used by volume `{other}`",
                                    source.display()
                                ),
                            );
                            valid = false;
                        }
                        sources.insert(source.clone(), volume.name.clone());
                    }
                    volumes.push(volume);
                }
                None => valid = false,
            }
        }
        valid.then_some(volumes)
    }

    fn volume(
        &mut self,
        group: &TableReader<'_, '_>,
        table: &DeTable<'_>,
        span: Span,
        index: usize,
        raw_name: &mut Option<String>,
    ) -> Option<Volume> {
        let mut reader = TableReader {
            table,
            span,
            path: format!("{}.volume[{index}]", group.path),
            known: VOLUME_FIELDS,
        };
        let name = self.name(&reader, "volume");
        if let Some((name, _)) = &name {
            reader.path = format!("{}.volume[{name}]", group.path);
            *raw_name = Some(name.clone());
        }
        self.unknown_fields(&reader);
        let size = self.size(&reader, "size").and_then(|(bytes, span)| {
            if bytes == 0 || bytes % VOLUME_BLOCK_SIZE_BYTES != 0 {
                self.error(
                    span,
                    join(&reader.path, "size"),
                    format!(
                        "{bytes} bytes is not a positive multiple of {VOLUME_BLOCK_SIZE_BYTES} (the volume block size)"
                    ),
                );
                None
            } else {
                Some(bytes)
            }
        });
        let mut source_ok = true;
        let source = match self.string(&reader, "source", false) {
            None => None,
            Some((text, span)) => {
                let path = PathBuf::from(&text);
                if path.is_absolute() && !text.contains('\0') {
                    Some(path)
                } else {
                    self.error(
                        span,
                        join(&reader.path, "source"),
                        format!("`{text}` must be an absolute path"),
                    );
                    source_ok = false;
                    None
                }
            }
        };
        if !source_ok {
            return None;
        }
        Some(Volume {
            name: name?.0,
            size_bytes: size?,
            source,
        })
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `host:port` or `[v6]:port`, port 1..=65535.
pub fn check_host_port(text: &str) -> Result<(), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` is not host:port (e.g. \"127.0.0.1:7411\")"
        ));
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    if !host_ok {
        return Err(format!(
            "`{host}` in `{text}` is not a host name or IP address"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("`{port}` in `{text}` is not a port (1 to 65535)")),
    }
}

fn parse_nbd_listen(text: &str) -> Result<NbdListen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if Path::new(path).is_absolute() && !path.contains('\0') {
            return Ok(NbdListen::Unix(PathBuf::from(path)));
        }
        return Err(format!("`{text}`: the unix socket path must be absolute"));
    }
    check_host_port(text).map(|()| NbdListen::Tcp(text.to_string()))
}
