//! API tokens and roles (`docs/security.md`).
//!
//! Two bearer tokens, each a file of 32 random bytes in hex, mode 0600, in the console's state
//! directory: `token` (role **operator**: everything) and `token.readonly` (role
//! **read-only**: GET and HEAD routes, and the dry-run plan). No token or a wrong one: 401;
//! a read-only token on a mutating route: 403. Rotation writes a new token to its file
//! atomically and the old one stops working at once. Tokens never reach a log or the audit
//! log; comparisons take constant time.
//!
//! [`authorize`] is the one role check: the API middleware ([`require_role`]) and any other
//! front door (the web console's sessions) call it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::runner::Shared;

/// The read-only token's file in the state directory (the operator's is `crate::TOKEN_FILE`).
pub const READ_ONLY_TOKEN_FILE: &str = "token.readonly";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// POST routes a read-only token may call: they change nothing.
pub const READ_ONLY_POSTS: &[&str] = &["/v1/config/plan"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ReadOnly,
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read-only" | "readonly" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    fn file(self) -> &'static str {
        match self {
            Role::ReadOnly => READ_ONLY_TOKEN_FILE,
            Role::Operator => crate::TOKEN_FILE,
        }
    }
}

/// Who made a request, put in the request's extensions by [`require_role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {} is empty or not hex", .0.display())]
    BadToken(PathBuf),
    #[error("the console has no state directory to keep tokens in")]
    NoStateDir,
}

struct Inner {
    operator: String,
    read_only: Option<String>,
    state_dir: Option<PathBuf>,
}

/// The console's tokens. Cheap to read; rotation swaps one under a lock.
pub struct Tokens {
    inner: RwLock<Inner>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuthError + 'a {
    move |source| AuthError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `token` to `dir/file` durably and privately (0600, also while temporary).
fn write_token(dir: &Path, file: &str, token: &str) -> Result<(), AuthError> {
    let path = dir.join(file);
    redoubt_durable::replace_private(&path, format!("{token}\n").as_bytes())
        .map_err(io("replace durably", &path))
}

fn read_token(path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let token = text.trim().to_string();
    if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(AuthError::BadToken(path.to_path_buf()));
    }
    Ok(token)
}

impl Tokens {
    /// Only an operator token, kept in memory (tests, and until [`Tokens::attach`]).
    pub fn new(operator: String) -> Tokens {
        Tokens {
            inner: RwLock::new(Inner {
                operator,
                read_only: None,
                state_dir: None,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps the tokens in `state_dir`: reads the operator token there (it was created with
    /// the console) and reads or creates the read-only token.
    pub fn attach(&self, state_dir: &Path) -> Result<(), AuthError> {
        let operator = read_token(&state_dir.join(crate::TOKEN_FILE))?;
        let read_only_path = state_dir.join(READ_ONLY_TOKEN_FILE);
        let read_only = if read_only_path.exists() {
            read_token(&read_only_path)?
        } else {
            let token = new_token();
            write_token(state_dir, READ_ONLY_TOKEN_FILE, &token)?;
            token
        };
        let mut inner = self.write();
        inner.operator = operator;
        inner.read_only = Some(read_only);
        inner.state_dir = Some(state_dir.to_path_buf());
        Ok(())
    }

    /// The role `presented` grants, if it is a current token.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let inner = self.read();
        if constant_time_eq(presented.as_bytes(), inner.operator.as_bytes()) {
            return Some(Role::Operator);
        }
        match &inner.read_only {
            Some(token) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => {
                Some(Role::ReadOnly)
            }
            _ => None,
        }
    }

    /// Replaces the token of `role` with a new one, in its file and at once in memory.
    /// Returns the new token and its file.
    pub fn rotate(&self, role: Role) -> Result<(String, PathBuf), AuthError> {
        let mut inner = self.write();
        let dir = inner.state_dir.clone().ok_or(AuthError::NoStateDir)?;
        let token = new_token();
        write_token(&dir, role.file(), &token)?;
        match role {
            Role::Operator => inner.operator = token.clone(),
            Role::ReadOnly => inner.read_only = Some(token.clone()),
        }
        Ok((token, dir.join(role.file())))
    }
}

/// The role a request needs: GET and HEAD (and the dry-run plan) read, the rest changes.
pub fn required_role(method: &Method, path: &str) -> Role {
    if matches!(*method, Method::GET | Method::HEAD)
        || (*method == Method::POST && READ_ONLY_POSTS.contains(&path))
    {
        Role::ReadOnly
    } else {
        Role::Operator
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token or an unknown one: 401.
    Unauthenticated,
    /// A valid token whose role may not do this: 403.
    Forbidden(Role),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong API token (Authorization: Bearer <token>)"})),
            )
                .into_response(),
            Refusal::Forbidden(role) => (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": format!("the {} token may only read; this needs the operator token", role.name()),
                })),
            )
                .into_response(),
        }
    }
}

/// The role check: the caller presenting `presented` may do `method path`, or why not.
pub fn authorize(
    tokens: &Tokens,
    presented: Option<&str>,
    method: &Method,
    path: &str,
) -> Result<Caller, Refusal> {
    let role = presented
        .and_then(|token| tokens.role_of(token))
        .ok_or(Refusal::Unauthenticated)?;
    if role >= required_role(method, path) {
        Ok(Caller { role })
    } else {
        Err(Refusal::Forbidden(role))
    }
}

/// The API's middleware: [`authorize`], then the audit entry of every request that is not a
/// read (`crate::audit`), refused ones included.
pub async fn require_role(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let audited = !matches!(method, Method::GET | Method::HEAD);
    let decision = authorize(&shared.auth, bearer(request.headers()), &method, &path);
    let (who, response) = match decision {
        Ok(caller) => match path_like_segment(&path) {
            // A name in a path (group, snapshot, point) never names a file outside data_dir.
            Some(segment) => (
                caller.role.name(),
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error": format!("{segment:?} in the path is not a valid name: no '..', '/', '\\' or NUL"),
                    })),
                )
                    .into_response(),
            ),
            None => {
                request.extensions_mut().insert(caller);
                (caller.role.name(), next.run(request).await)
            }
        },
        Err(refusal) => {
            let who = match refusal {
                Refusal::Unauthenticated => "anonymous",
                Refusal::Forbidden(role) => role.name(),
            };
            (who, refusal.into_response())
        }
    };
    if audited {
        crate::audit::record_response(&shared, who, &method, &path, &response);
    }
    response
}

#[derive(Debug, Deserialize)]
struct RotateBody {
    role: String,
}

/// `POST /v1/auth/rotate {"role": "operator"|"read-only"}` (operator only): a new token for
/// the role, in its file and in effect at once; the answer carries it once.
async fn rotate(State(shared): State<Arc<Shared>>, Json(body): Json<RotateBody>) -> Response {
    let Some(role) = Role::parse(&body.role) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("unknown role {:?}: operator or read-only", body.role)})),
        )
            .into_response();
    };
    match shared.auth.rotate(role) {
        Ok((token, file)) => (
            crate::audit::note(format!("rotated the {} token", role.name())),
            Json(json!({"role": role.name(), "token": token, "file": file})),
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("rotate the {} token: {error}", role.name())})),
        )
            .into_response(),
    }
}

/// `POST /v1/auth/rotate`.
pub fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new().route("/v1/auth/rotate", axum::routing::post(rotate))
}

/// The first segment of `path` that, percent-decoded, is `.` or `..` or holds `/`, `\\` or
/// NUL: such a segment could only be an attempt to leave a directory.
pub fn path_like_segment(path: &str) -> Option<String> {
    path.split('/').find_map(|raw| {
        let decoded = percent_decode(raw);
        let bad = decoded == b"."
            || decoded == b".."
            || decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0));
        bad.then(|| String::from_utf8_lossy(&decoded).into_owned())
    })
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes.get(index), bytes.get(index + 1), bytes.get(index + 2)) {
            (Some(b'%'), Some(&high), Some(&low)) => match (hex(high), hex(low)) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    index += 3;
                }
                _ => {
                    out.push(b'%');
                    index += 1;
                }
            },
            (Some(&byte), _, _) => {
                out.push(byte);
                index += 1;
            }
            (None, _, _) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::path_like_segment;

    #[test]
    fn path_like_segments_are_found_encoded_or_not() {
        for path in [
            "/v1/init/..",
            "/v1/init/..%2Fetc",
            "/v1/init/%2e%2e",
            "/v1/x/a%00b",
            "/v1/x/a%5Cb",
        ] {
            assert!(path_like_segment(path).is_some(), "{path}");
        }
        for path in [
            "/v1/init/erp",
            "/v1/config/plan",
            "/v1/init/lv_data.01",
            "/v1/x/100%25",
        ] {
            assert!(path_like_segment(path).is_none(), "{path}");
        }
    }
}
